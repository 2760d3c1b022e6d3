"""Export to CTranslate2: our Transformer written as a CTranslate2 model directory.

The weights fill `ctranslate2.specs.TransformerSpec` directly (no converter from
another framework), so CTranslate2's C++ runtime can serve a model trained here. What
makes the two compute the same function:

- Layout: CTranslate2 linears are `weight [out, in]` (+ `bias`); self-attention has
  one fused QKV projection [3 * d, d], cross-attention Q [d, d] and a fused KV
  projection [2 * d, d]. Our keys have no bias, so the key rows get a zero bias.
- Embeddings are scaled by sqrt(d) (`scale_embeddings`, CTranslate2's default) and
  the sinusoid table is ours (`models.layers.sinusoid_table`, [sin | cos]), stored as
  `position_encodings.encodings`: positions past `max_len` are then an error in
  CTranslate2 where ours clip. Shared embeddings and the tied output projection are
  written as equal arrays; `spec.optimize` stores them once (a variable alias).
- Layer norm epsilon is Flax's 1e-6 (CTranslate2 would default to 1e-5).
- Tokens: the vocabulary is the SentencePiece pieces in id order, so ids map 1:1;
  the decoder starts from the pad piece (our start token), EOS is id 1, and
  `add_source_eos` appends EOS to the source as our tokenizer pipeline does.

The directory also holds `spm.model` (the run's tokenizer, to turn text into the
pieces CTranslate2 takes), `MODEL_CARD.md` when exported from a run
(inference/model_card.py) and `SHA256SUMS` (storage/integrity.py). It is built beside
the old one and swapped in whole (`files.replace_dir`), so a kill at any point
leaves the previous export or the new one, complete, and no file of an older export
stays behind.

CTranslate2 is an optional dependency (`pip install 'nmt-enfr[ctranslate2]'`),
imported only when exporting.
"""
from collections.abc import Sequence
import os
import shutil

from flax import nnx
import jax
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import model_card
from models import transformer
from models.layers import sinusoid_table
from storage import files
from storage import integrity

TOKENIZER_FILE = "spm.model"
_EXPORT_FILES = ("model.bin", integrity.MANIFEST)  # What marks an export directory.


def _f32(x) -> np.ndarray:
  """A writable float32 copy on the host: CTranslate2 takes no bfloat16 numpy arrays
  (`quantization` picks the stored type) and quantizes in place."""
  return np.array(jax.device_get(x), np.float32)


def _import_ctranslate2():
  try:
    import ctranslate2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Exporting to CTranslate2 needs the ctranslate2 package:"
                      " pip install 'nmt-enfr[ctranslate2]'.") from e
  return ctranslate2


def vocabulary(tokenizer_or_vocab) -> list[str]:
  """The pieces in id order: a `Tokenizer`'s SentencePiece pieces, or a list as is."""
  if isinstance(tokenizer_or_vocab, tokenizer_lib.Tokenizer):
    sp = tokenizer_or_vocab._sp  # pylint: disable=protected-access
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  pieces = list(tokenizer_or_vocab)
  if len(set(pieces)) != len(pieces):
    raise ValueError("The vocabulary has repeated pieces; ids would not map 1:1.")
  return pieces


def synthetic_vocabulary(size: int) -> list[str]:
  """`size` distinct pieces with our special ids, for models with random weights."""
  special = {tokenizer_lib.PAD_ID: "<pad>", tokenizer_lib.EOS_ID: "</s>",
             tokenizer_lib.UNK_ID: "<unk>"}
  return [special.get(i, f"w{i}") for i in range(size)]


def _linear(spec, kernel, bias=None, out_dims: int = 1) -> None:
  """Sets a LinearSpec from a Flax kernel [in..., out...] (the last `out_dims` axes
  are outputs) as weight [out, in]; a missing bias is written as zeros."""
  kernel = _f32(kernel)
  out_shape = kernel.shape[kernel.ndim - out_dims:]
  weight = kernel.reshape(-1, int(np.prod(out_shape))).T  # [out, in]
  spec.weight = np.ascontiguousarray(weight)
  spec.bias = (np.zeros(weight.shape[0], np.float32) if bias is None
               else _f32(bias).reshape(-1))


def _layer_norm(spec, norm: nnx.LayerNorm) -> None:
  spec.gamma, spec.beta = _f32(norm.scale[...]), _f32(norm.bias[...])


def _heads(proj: nnx.LinearGeneral) -> tuple[np.ndarray, np.ndarray | None]:
  """An [embed, heads, head_dim] projection as kernel [embed, qkv], bias [qkv]."""
  kernel = _f32(proj.kernel[...])
  kernel = kernel.reshape(kernel.shape[0], -1)
  bias = None if proj.bias is None else _f32(proj.bias[...]).reshape(-1)
  return kernel, bias


def _fused(spec, projections: Sequence[nnx.LinearGeneral]) -> None:
  """Concatenates projections on the output axis: fused QKV or KV [n * qkv, embed]."""
  kernels, biases = zip(*map(_heads, projections))
  biases = [np.zeros(k.shape[1], np.float32) if b is None else b
            for k, b in zip(kernels, biases)]
  _linear(spec, np.concatenate(kernels, axis=1), np.concatenate(biases))


def _attention(spec, attn, self_attention: bool) -> None:
  if self_attention:
    _fused(spec.linear[0], [attn.query, attn.key, attn.value])
  else:
    _fused(spec.linear[0], [attn.query])
    _fused(spec.linear[1], [attn.key, attn.value])
  _linear(spec.linear[-1], attn.out.kernel[...], attn.out.bias[...])  # [heads, kv, embed]


def _ffn(spec, mlp, norm) -> None:
  _layer_norm(spec.layer_norm, norm)
  _linear(spec.linear_0, mlp.wi.kernel[...], mlp.wi.bias[...])
  _linear(spec.linear_1, mlp.wo.kernel[...], mlp.wo.bias[...])


def _check_supported(cfg: transformer.TransformerConfig) -> None:
  if cfg.qkv_dim != cfg.emb_dim:
    # CTranslate2 takes the head size from the output projection (emb_dim / heads);
    # TransformerSpec.from_config has no head_dim to say otherwise.
    raise ValueError(f"CTranslate2 export needs model.qkv_dim == model.emb_dim; this "
                     f"model has {cfg.qkv_dim} and {cfg.emb_dim}.")
  if cfg.emb_dim % 2:
    raise ValueError(f"model.emb_dim={cfg.emb_dim} must be even (sin | cos table).")


def build_spec(model: transformer.Transformer, pieces: Sequence[str]):
  """The filled, validated `ctranslate2.specs.TransformerSpec` of `model`."""
  ctranslate2 = _import_ctranslate2()
  cfg = model.cfg
  _check_supported(cfg)
  if len(pieces) != cfg.vocab_size:
    raise ValueError(f"The vocabulary has {len(pieces)} pieces but the model "
                     f"{cfg.vocab_size} embeddings.")
  spec = ctranslate2.specs.TransformerSpec.from_config(
      (cfg.num_encoder_layers, cfg.num_decoder_layers), cfg.num_heads,
      pre_norm=cfg.pre_layer_norm,  # Post-LN has no final norms, here as in CT2.
      activation=ctranslate2.specs.Activation.RELU)
  positions = sinusoid_table(cfg.max_len, cfg.emb_dim)  # [max_len, embed]
  source_table = _f32(model.embed.embedding[...])  # [vocab, embed]
  target_table = (source_table if model.target_embed is None
                  else _f32(model.target_embed.embedding[...]))

  encoder = spec.encoder
  encoder.embeddings[0].weight = source_table
  encoder.scale_embeddings = True  # x * sqrt(d), as Transformer._embed.
  encoder.position_encodings.encodings = positions
  for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
    _layer_norm(layer_spec.self_attention.layer_norm, layer.attn_norm)
    _attention(layer_spec.self_attention, layer.attn, self_attention=True)
    _ffn(layer_spec.ffn, layer.mlp, layer.mlp_norm)
  if cfg.pre_layer_norm:
    _layer_norm(encoder.layer_norm, model.encoder_norm)

  decoder = spec.decoder
  decoder.embeddings.weight = target_table
  decoder.scale_embeddings = True
  decoder.position_encodings.encodings = positions
  for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
    _layer_norm(layer_spec.self_attention.layer_norm, layer.self_norm)
    _attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
    _layer_norm(layer_spec.attention.layer_norm, layer.cross_norm)
    _attention(layer_spec.attention, layer.cross_attn, self_attention=False)
    _ffn(layer_spec.ffn, layer.mlp, layer.mlp_norm)
  if cfg.pre_layer_norm:
    _layer_norm(decoder.layer_norm, model.decoder_norm)
  if model.logits_dense is None:  # Tied: logits = y @ E^T, no bias.
    decoder.projection.weight = target_table
  else:
    _linear(decoder.projection, model.logits_dense.kernel[...],
            model.logits_dense.bias[...])

  pieces = list(pieces)
  spec.register_source_vocabulary(pieces)
  spec.register_target_vocabulary(pieces)
  pad = pieces[tokenizer_lib.PAD_ID]
  spec.config.unk_token = pieces[tokenizer_lib.UNK_ID]
  spec.config.eos_token = pieces[tokenizer_lib.EOS_ID]
  spec.config.bos_token = pad  # We have no BOS; nothing adds one (add_source_bos).
  spec.config.decoder_start_token = pad  # Our decoder starts from pad, as T5.
  spec.config.add_source_bos = False
  spec.config.add_source_eos = True  # Sources: pieces + EOS (bucketing.tokenize).
  spec.config.layer_norm_epsilon = 1e-6  # nnx.LayerNorm's default.
  spec.validate()
  return spec


def check_output_dir(path) -> None:
  """Raises ValueError if `path` is not a directory an export may replace.

  New, empty, or a previous export (model.bin or SHA256SUMS): replaced whole. Any
  other existing file or directory is refused, so an export never deletes files it
  did not write. Called before the model loads.
  """
  path = os.fspath(path)
  if files.is_remote(path):
    raise ValueError(f"--output={path}: CTranslate2 writes local directories; export"
                     " to a local path, then copy it.")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--output={path} is a file; give a directory (new, empty, or"
                     " an earlier export).")
  if (os.path.isdir(path) and os.listdir(path)
      and not any(os.path.exists(os.path.join(path, f)) for f in _EXPORT_FILES)):
    raise ValueError(f"--output={path} is a directory that holds other files and no"
                     " export (no model.bin): exporting would replace it whole. Give"
                     " a new or empty directory.")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.access(parent if os.path.isdir(parent) else "/", os.W_OK):
    raise ValueError(f"--output={path}: cannot write in {parent}.")


def _write_directory(spec, tokenizer_or_vocab, output_dir: str,
                     card: str | None) -> None:
  """spec.save, spm.model, the card and SHA256SUMS into a staging directory, then
  swapped in."""
  files.recover_dir(output_dir)
  staging = files.staging_dir(output_dir)
  try:
    spec.save(staging)
    if isinstance(tokenizer_or_vocab, tokenizer_lib.Tokenizer):
      files.atomic_write(os.path.join(staging, TOKENIZER_FILE),
                         tokenizer_or_vocab.proto)
    if card is not None:
      files.atomic_write(os.path.join(staging, model_card.CARD_FILE), card)
    integrity.write_manifest(staging)
    files.replace_dir(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def export_ctranslate2(graphdef_or_model, params, model_config: transformer.TransformerConfig,
                       tokenizer_or_vocab, output_dir, quantization: str | None = None,
                       card: str | None = None) -> str:
  """Writes a CTranslate2 model directory for our Transformer; returns its path.

  graphdef_or_model: an `nnx.GraphDef` with `params` (e.g. from `restore_params`),
  or a `Transformer` (then `params` may be None). tokenizer_or_vocab: the run's
  `Tokenizer` (then written as spm.model too) or its pieces in id order.
  quantization: None keeps float32 weights; "int8" (or any CTranslate2
  quantization, e.g. "int8_float32", "float16") sets the stored type. `card`: the
  text of MODEL_CARD.md (inference/model_card.py), if any. The directory is replaced
  whole, atomically (`check_output_dir` says which may be).
  """
  _import_ctranslate2()
  output_dir = os.path.abspath(os.fspath(output_dir))
  check_output_dir(output_dir)
  model = (graphdef_or_model if isinstance(graphdef_or_model, nnx.Module)
           else nnx.merge(graphdef_or_model, params))
  if model.cfg.with_dtype("float32") != model_config.with_dtype("float32"):
    raise ValueError(f"model_config {model_config} does not describe this model "
                     f"({model.cfg}).")  # Dtypes aside: the export is float32 first.
  spec = build_spec(model, vocabulary(tokenizer_or_vocab))
  spec.optimize(quantization=quantization)
  _write_directory(spec, tokenizer_or_vocab, output_dir, card)
  return output_dir


def translate_options(pieces: Sequence[str], *, beam_size: int,
                      max_decoding_length: int, forced_len: int | None = None) -> dict:
  """`Translator.translate_batch` options that follow `models.decoding`'s rules.

  Pad is never emitted (suppressed), EOS never comes first (`min_decoding_length`
  1, CTranslate2's default, is our rule: no translation is empty), and there is no
  length normalisation (`length_penalty` 0; CTranslate2 divides by len**penalty,
  not GNMT's ((5 + len) / 6)**alpha, so only alpha = 0 compares like with like).
  `max_decoding_length` counts EOS, as our a * src_len + b. `forced_len`: EOS
  suppressed, exactly that many tokens (the benchmark protocol).
  """
  options = dict(beam_size=beam_size, length_penalty=0.0,
                 suppress_sequences=[[pieces[tokenizer_lib.PAD_ID]]],
                 max_decoding_length=max_decoding_length, min_decoding_length=1)
  if forced_len is not None:
    options.update(max_decoding_length=forced_len, min_decoding_length=forced_len)
  return options
