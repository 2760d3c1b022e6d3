"""Encoder-decoder Transformer (Vaswani et al., 2017) in Flax NNX.

Handles packed batches (segment ids and per-sentence positions), pre- or post-LN
blocks, one shared embedding for source, target and output logits, and incremental
decoding for beam search: cross-attention keys/values are projected once per
sentence (`precompute_cross_kv`) and self-attention keys/values go into a
preallocated cache (`init_cache`, `decode_step`) that beam search never copies
(`models/decode_state.py`). Caches are plain pytrees a `lax.while_loop` can carry.
"""
from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

from models import quantization
from models.decode_state import (KEY_AXES, VALUE_AXES, CrossKV, DecodeCache,
                                 OutputTable)
from models.layers import (MlpBlock, MultiHeadAttention, attention_mask, layer_norm,
                           partitioned, position_embedding, shift_right,
                           transpose_keys, update_cache)
from parallel.sharding import with_logical_constraint

Array = jax.Array
ACTIVATION = ("batch", "length", "embed")  # Logical axes of the residual stream.


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Model hyperparameters; the fields of `config.model` plus the vocabulary size."""
  vocab_size: int
  pad_id: int  # Padding, also the decoder's start token: the tokenizer's PAD_ID.
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  qkv_dim: int = 512
  mlp_dim: int = 2048
  max_len: int = 256
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  share_embeddings: bool = True
  pre_layer_norm: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False  # Recompute each layer in the backward pass (less memory).

  def __post_init__(self):
    # The one check of the head split; MultiHeadAttention trusts it.
    if self.qkv_dim % self.num_heads:
      raise ValueError(f"model.qkv_dim={self.qkv_dim} must be a multiple of "
                       f"model.num_heads={self.num_heads}.")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not a dtype.") from e

  @property
  def head_dim(self) -> int:
    return self.qkv_dim // self.num_heads

  @classmethod
  def from_config(cls, model_cfg: Any, *, vocab_size: int, pad_id: int
                  ) -> "TransformerConfig":
    """From `config.model` (ConfigDict or dict) and the tokenizer's size and pad id.

    Unknown fields are an error.
    """
    fields = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    known = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "pad_id"}
    if unknown := sorted(set(fields) - known):
      raise ValueError(f"Unknown config.model fields {unknown}; expected some of "
                       f"{sorted(known)}.")
    return cls(vocab_size=vocab_size, pad_id=pad_id, **fields)

  def with_dtype(self, dtype: str | None) -> "TransformerConfig":
    """The same model computing and storing parameters in `dtype` (None: unchanged)."""
    return self if not dtype else dataclasses.replace(self, dtype=dtype,
                                                      param_dtype=dtype)

  def make_model(self, seed: int = 0) -> Callable[[], "Transformer"]:
    """A constructor for `Partitioner.abstract_params` / `init_params`."""
    return lambda: Transformer(self, rngs=nnx.Rngs(seed))


def count_params(params: nnx.State) -> int:
  """Number of parameter values in a params state (concrete or abstract)."""
  return sum(x.size for x in jax.tree.leaves(params))


def _segments(tokens: Array, segment_ids: Array | None, pad_id: int) -> Array:
  """[batch, length] segment ids; unpacked input: 1 for tokens, 0 for padding."""
  return (tokens != pad_id).astype(jnp.int32) if segment_ids is None else segment_ids


def _as_rngs(rngs):
  """A bare key becomes an nnx.Rngs, so each dropout site draws its own key."""
  return nnx.Rngs(dropout=rngs) if isinstance(rngs, jax.Array) else rngs


def _positions(tokens: Array, positions: Array | None) -> Array:
  if positions is not None:
    return positions
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class _Block(nnx.Module):
  """Residual wiring shared by encoder and decoder layers (pre- or post-LN)."""

  def _branch_in(self, x: Array, norm: nnx.LayerNorm) -> Array:
    return norm(x) if self.pre_ln else x

  def _branch_out(self, x: Array, h: Array, norm: nnx.LayerNorm, deterministic: bool,
                  rngs) -> Array:
    h = self.dropout(h, deterministic=deterministic, rngs=rngs)
    return x + h if self.pre_ln else norm(x + h)


class EncoderLayer(_Block):
  """Self-attention and feed-forward block."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.pre_ln = cfg.pre_layer_norm
    self.attn_norm = layer_norm(cfg.emb_dim, dtype, pdtype, rngs)
    self.attn = MultiHeadAttention(cfg.emb_dim, cfg.num_heads, cfg.qkv_dim,
                                   dropout_rate=cfg.attention_dropout_rate,
                                   dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.mlp_norm = layer_norm(cfg.emb_dim, dtype, pdtype, rngs)
    self.mlp = MlpBlock(cfg.emb_dim, cfg.mlp_dim, dropout_rate=cfg.dropout_rate,
                        dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, x: Array, mask: Array, *, deterministic: bool = True,
               rngs=None) -> Array:
    kw = dict(deterministic=deterministic, rngs=rngs)
    h = self._branch_in(x, self.attn_norm)
    x = self._branch_out(x, self.attn(h, h, mask, **kw), self.attn_norm, **kw)
    h = self._branch_in(x, self.mlp_norm)
    x = self._branch_out(x, self.mlp(h, **kw), self.mlp_norm, **kw)
    return with_logical_constraint(x, ACTIVATION)  # [batch, src_len, embed]


class DecoderLayer(_Block):
  """Causal self-attention, cross-attention and feed-forward block."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    attn = functools.partial(MultiHeadAttention, cfg.emb_dim, cfg.num_heads, cfg.qkv_dim,
                             dropout_rate=cfg.attention_dropout_rate, dtype=dtype,
                             param_dtype=pdtype, rngs=rngs)
    self.pre_ln = cfg.pre_layer_norm
    norm = functools.partial(layer_norm, cfg.emb_dim, dtype, pdtype, rngs)
    self.self_norm, self.self_attn = norm(), attn()
    self.cross_norm, self.cross_attn = norm(), attn()
    self.mlp_norm = norm()
    self.mlp = MlpBlock(cfg.emb_dim, cfg.mlp_dim, dropout_rate=cfg.dropout_rate,
                        dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, y: Array, self_mask: Array, cross_k: Array, cross_v: Array,
               cross_mask: Array, *, deterministic: bool = True, rngs=None,
               cache: tuple[Array, Array] | None = None, index: Array | None = None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """y [batch, tgt_len, embed] -> (y, cache); a given cache gets K/V at `index`.

    Decoding (a cache given) takes cross_k and the cached keys transposed
    ([batch, heads, head_dim, len], `transpose_keys`), as `decode_step` keeps them.
    """
    kw = dict(deterministic=deterministic, rngs=rngs)
    decoding = cache is not None  # Then every key array is `transpose_keys`-ed.
    with jax.named_scope("self_attention"):  # Scopes name the ops in profiles.
      h = self._branch_in(y, self.self_norm)
      k, v = self.self_attn.project_kv(h)  # [batch, heads, tgt_len, head_dim]
      if decoding:  # tgt_len == 1, one position per hypothesis.
        # Every hypothesis attends to its sentence's whole cache, masked to its
        # ancestors' entries (DecodeCache).
        k = update_cache(cache[0], k, index, keys_transposed=True)
        v = update_cache(cache[1], v, index)
        cache = (k, v)
      h = self.self_attn.attend(h, k, v, self_mask, keys_transposed=decoding, **kw)
      y = self._branch_out(y, h, self.self_norm, **kw)
    with jax.named_scope("cross_attention"):
      h = self.cross_attn.attend(self._branch_in(y, self.cross_norm), cross_k, cross_v,
                                 cross_mask, keys_transposed=decoding, **kw)
      y = self._branch_out(y, h, self.cross_norm, **kw)
    with jax.named_scope("mlp"):
      y = self._branch_out(y, self.mlp(self._branch_in(y, self.mlp_norm), **kw),
                           self.mlp_norm, **kw)
    return with_logical_constraint(y, ACTIVATION), cache  # [batch, tgt_len, embed]


class Transformer(nnx.Module):
  """Encoder-decoder Transformer returning float32 logits [batch, tgt_len, vocab]."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    # Std d**-0.5: inputs are scaled by sqrt(d) (unit variance) and the transposed
    # table gives logits of unit scale.
    embed = functools.partial(
        nnx.Embed, cfg.vocab_size, cfg.emb_dim, dtype=dtype, param_dtype=pdtype,
        rngs=rngs, embedding_init=partitioned(
            nnx.initializers.normal(cfg.emb_dim**-0.5), ("vocab", "embed")))
    self.embed = embed()  # Source table; also target and output when shared.
    self.target_embed = None if cfg.share_embeddings else embed()
    self.logits_dense = None if cfg.share_embeddings else nnx.Linear(
        cfg.emb_dim, cfg.vocab_size, dtype=dtype, param_dtype=pdtype, rngs=rngs,
        kernel_init=partitioned(nnx.initializers.xavier_uniform(), ("embed", "vocab")),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("vocab",)))
    self.encoder_layers = nnx.List(
        [EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.decoder_layers = nnx.List(
        [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)])
    # Pre-LN leaves the residual stream unnormalised: one final LN per stack.
    norm = functools.partial(layer_norm, cfg.emb_dim, dtype, pdtype, rngs)
    self.encoder_norm = norm() if cfg.pre_layer_norm else None
    self.decoder_norm = norm() if cfg.pre_layer_norm else None
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def _embed(self, table: nnx.Embed, tokens: Array, positions: Array,
             deterministic: bool, rngs) -> Array:
    """tokens [batch, length] -> sqrt(d) * embedding + sinusoid [batch, length, embed]."""
    x = table(tokens) * self.cfg.emb_dim**0.5
    x = x + position_embedding(positions, self.cfg.max_len, self.cfg.emb_dim, x.dtype)
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    return with_logical_constraint(x, ACTIVATION)

  def _logits(self, y: Array, output_table: "OutputTable | None" = None) -> Array:
    """[batch, length, embed] -> float32 [batch, length, vocab].

    With `output_table` (from `output_table()`, built once per decode call) the
    projection reads an [embed, vocab] kernel instead of the transposed embedding.
    """
    with jax.named_scope("output_projection"):  # Names the ops in profiles.
      if self.decoder_norm is not None:
        y = self.decoder_norm(y)
      if output_table is not None:
        logits = output_table.project(y)
      elif self.logits_dense is None:
        logits = self.embed.attend(y)
      else:
        logits = self.logits_dense(y)
      return with_logical_constraint(logits.astype(jnp.float32),
                                     ("batch", "length", "vocab"))

  def output_table(self) -> "OutputTable":
    """The output projection laid out [embed, vocab], for decoding.

    With shared embeddings the logits are y @ E.T; a dot against the transposed
    [vocab, embed] table streams the weights at about 60% of the speed of an
    [embed, vocab] one on CPU, so decoding transposes E once per call, outside its
    loop. Training keeps the one shared table. A quantized model
    (models/quantization.py) has its int8 table laid out already.
    """
    output = self.embed if self.logits_dense is None else self.logits_dense
    if isinstance(output, (quantization.Int8Embed, quantization.Int8Linear)):
      kernel, scale, bias = output.output_weights()
      return OutputTable(kernel=kernel, bias=bias, scale=scale,
                         quantize_inputs=output.quantize_inputs)
    if self.logits_dense is None:
      # Whole across 'fsdp' (embed unsharded): read at every step, an FSDP table
      # would gather its logits at every step.
      kernel = self.embed.embedding[...].T
      return OutputTable(kernel=with_logical_constraint(kernel, (None, "vocab")),
                         bias=None)
    return OutputTable(kernel=self.logits_dense.kernel[...],
                       bias=self.logits_dense.bias[...])

  @property
  def _target_table(self) -> nnx.Embed:
    return self.embed if self.target_embed is None else self.target_embed

  def _run_layer(self, layer: nnx.Module, *args, deterministic: bool, rngs):
    """layer(*args, ...); with `cfg.remat`, its activations are recomputed in the
    backward pass instead of kept (jax.checkpoint), for batches that would not fit."""
    if not self.cfg.remat:
      return layer(*args, deterministic=deterministic, rngs=rngs)
    call = nnx.remat(lambda layer, rngs, *args: layer(
        *args, deterministic=deterministic, rngs=rngs))
    return call(layer, rngs, *args)

  def encode(self, inputs: Array, *, inputs_segment_ids: Array | None = None,
             inputs_positions: Array | None = None, deterministic: bool = True,
             rngs=None) -> Array:
    """inputs [batch, src_len] -> encoded [batch, src_len, embed]."""
    rngs = _as_rngs(rngs)
    segments = _segments(inputs, inputs_segment_ids, self.cfg.pad_id)
    mask = attention_mask(segments, segments)  # [batch, 1, src_len, src_len]
    x = self._embed(self.embed, inputs, _positions(inputs, inputs_positions),
                    deterministic, rngs)
    for layer in self.encoder_layers:
      x = self._run_layer(layer, x, mask, deterministic=deterministic, rngs=rngs)
    return x if self.encoder_norm is None else self.encoder_norm(x)

  def decode(self, encoded: Array, inputs: Array, targets: Array, *,
             inputs_segment_ids: Array | None = None,
             targets_segment_ids: Array | None = None,
             targets_positions: Array | None = None, deterministic: bool = True,
             rngs=None) -> Array:
    """Teacher-forced decoder: targets [batch, tgt_len] -> logits [batch, tgt_len, vocab].

    `inputs` only provides the source mask. The decoder input is `targets` shifted
    right, with the start token (pad_id) at the beginning of every packed segment.
    """
    rngs = _as_rngs(rngs)
    src_seg = _segments(inputs, inputs_segment_ids, self.cfg.pad_id)
    tgt_seg = _segments(targets, targets_segment_ids, self.cfg.pad_id)
    self_mask = attention_mask(tgt_seg, tgt_seg, causal=True)  # [batch, 1, tgt, tgt]
    cross_mask = attention_mask(tgt_seg, src_seg)  # [batch, 1, tgt_len, src_len]
    decoder_inputs = shift_right(targets, targets_segment_ids, self.cfg.pad_id)
    y = self._embed(self._target_table, decoder_inputs,
                    _positions(targets, targets_positions), deterministic, rngs)
    for layer in self.decoder_layers:
      k, v = layer.cross_attn.project_kv(encoded)  # [batch, heads, src_len, head_dim]
      y, _ = self._run_layer(layer, y, self_mask, k, v, cross_mask,
                             deterministic=deterministic, rngs=rngs)
    return self._logits(y)

  def __call__(self, inputs: Array, targets: Array, *,
               inputs_segment_ids: Array | None = None,
               targets_segment_ids: Array | None = None,
               inputs_positions: Array | None = None,
               targets_positions: Array | None = None, deterministic: bool = True,
               rngs=None) -> Array:
    """Training/eval forward pass: logits [batch, tgt_len, vocab] in float32.

    With `deterministic=False`, dropout draws from `rngs` (an `nnx.Rngs` or a key,
    e.g. the seed folded with the step number): the model keeps no RNG state, so
    its whole state is its parameters.
    """
    rngs = _as_rngs(rngs)
    encoded = self.encode(inputs, inputs_segment_ids=inputs_segment_ids,
                          inputs_positions=inputs_positions,
                          deterministic=deterministic, rngs=rngs)
    return self.decode(encoded, inputs, targets, inputs_segment_ids=inputs_segment_ids,
                       targets_segment_ids=targets_segment_ids,
                       targets_positions=targets_positions,
                       deterministic=deterministic, rngs=rngs)

  # Incremental decoding (beam search). Rows are unpacked sentences.

  def precompute_cross_kv(self, encoded: Array) -> CrossKV:
    """Projects encoded [batch, src_len, embed] to every layer's cross-attention K/V.

    Keys come transposed (`transpose_keys`), the layout decoding reads fastest.
    """
    kv = [layer.cross_attn.project_kv(encoded) for layer in self.decoder_layers]
    return CrossKV(k=tuple(transpose_keys(k) for k, _ in kv), v=tuple(v for _, v in kv))

  def init_cache(self, batch_size: int, max_decode_len: int, beam_size: int = 1
                 ) -> DecodeCache:
    """Zeroed self-attention cache of `beam_size` hypotheses per sentence."""
    heads, keys, head_dim = (self.cfg.num_heads, max_decode_len * beam_size,
                             self.cfg.head_dim)
    zeros = lambda shape, axes: tuple(
        with_logical_constraint(jnp.zeros(shape, jnp.dtype(self.cfg.dtype)), axes)
        for _ in range(self.cfg.num_decoder_layers))
    return DecodeCache(k=zeros((batch_size, heads, head_dim, keys), KEY_AXES),
                       v=zeros((batch_size, heads, keys, head_dim), VALUE_AXES),
                       slots=jnp.zeros((batch_size, beam_size, max_decode_len),
                                       jnp.int32))

  def decode_step(self, token: Array, step_index: Array, cache: DecodeCache,
                  cross_kv: CrossKV, src_mask: Array,
                  output_table: "OutputTable | None" = None
                  ) -> tuple[Array, DecodeCache]:
    """Logits for position `step_index` given the previous token.

    token [rows] is the token at `step_index - 1` (pad_id, the start token, at step
    0); rows = batch * beam, the beams of sentence i being rows i * beam ...
    i * beam + beam - 1, as in `cache` (from `init_cache(batch, max_decode_len,
    beam)`); they share the sentence's cross K/V, uncopied. cross_kv and src_mask
    [batch, src_len] (True at real source tokens) cover the `batch` sentences.
    Returns float32 logits [rows, vocab] and the cache with this step's K/V written,
    each row into its own slot.
    """
    rows, (batch, beam, _) = token.shape[0], cache.slots.shape
    positions = jnp.full((rows, 1), step_index, jnp.int32)
    y = self._embed(self._target_table, token[:, None], positions, True, None)
    own_slot = jnp.broadcast_to(jnp.arange(beam, dtype=jnp.int32)[:, None],
                                (batch, beam, 1))  # Each hypothesis writes its own.
    cache = cache.replace(slots=lax.dynamic_update_slice(cache.slots, own_slot,
                                                         (0, 0, step_index)))
    self_mask = cache.ancestor_mask(step_index)  # [batch, 1, beam, max_len * beam]
    cross_mask = src_mask.astype(bool)[:, None, None, :]  # [batch, 1, 1, src_len]
    new_k, new_v = [], []
    for i, layer in enumerate(self.decoder_layers):
      y, (k, v) = layer(y, self_mask, cross_kv.k[i], cross_kv.v[i], cross_mask,
                        cache=(cache.k[i], cache.v[i]), index=step_index)
      new_k.append(k)
      new_v.append(v)
    logits = self._logits(y, output_table)[:, 0]  # [rows, vocab]
    return logits, cache.replace(k=tuple(new_k), v=tuple(new_v))
