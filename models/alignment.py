"""Source-target alignments from the decoder's cross-attention.

A decoded hypothesis is run once more, teacher-forced (one forward pass over its
tokens, so the attention is the one its decoding saw: the incremental decoder and
teacher forcing compute the same function, tests/test_decoding.py), and the
cross-attention weights of one decoder layer, averaged over its heads, give a soft
alignment [target, source]. Each target token's likeliest source token gives the hard
alignment, written in the Pharaoh `i-j` format (source i, target j, 0-based, over the
model's tokens) of fast_align and fairseq's --print-alignment. Source and target EOS
and padding take no part, as in fairseq's extract_hard_alignment.
"""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from models.layers import attention_mask, shift_right

Array = jax.Array


def cross_attention(graphdef: nnx.GraphDef, params: nnx.State, inputs: Array,
                    targets: Array, *, layer: int = -1) -> Array:
  """[batch, tgt_len, src_len] float32: decoder `layer`'s cross-attention weights,
  heads averaged, at each target position (the position that predicts that token).

  inputs [batch, src_len] and targets [batch, tgt_len] are pad-filled rows.
  """
  # pylint: disable=protected-access  (the Transformer's own embedding and wiring)
  model = nnx.merge(graphdef, params)
  layers = list(model.decoder_layers)
  if not -len(layers) <= layer < len(layers):
    raise ValueError(f"alignment_layer={layer}: the model has {len(layers)} decoder"
                     f" layers; give one in [{-len(layers)}, {len(layers)}).")
  layer = layer % len(layers)
  pad_id = model.cfg.pad_id
  src_seg = (inputs != pad_id).astype(jnp.int32)
  tgt_seg = (targets != pad_id).astype(jnp.int32)
  self_mask = attention_mask(tgt_seg, tgt_seg, causal=True)
  cross_mask = attention_mask(tgt_seg, src_seg)  # [batch, 1, tgt_len, src_len]
  encoded = model.encode(inputs)
  positions = jnp.broadcast_to(jnp.arange(targets.shape[1]), targets.shape)
  y = model._embed(model._target_table, shift_right(targets, None, pad_id),
                   positions, True, None)
  for below in layers[:layer]:
    k, v = below.cross_attn.project_kv(encoded)
    y, _ = below(y, self_mask, k, v, cross_mask)
  chosen = layers[layer]
  # The chosen layer up to its cross-attention: the self-attention block, as
  # DecoderLayer.__call__ wires it.
  h = chosen._branch_in(y, chosen.self_norm)
  k, v = chosen.self_attn.project_kv(h)
  h = chosen.self_attn.attend(h, k, v, self_mask)
  y = chosen._branch_out(y, h, chosen.self_norm, True, None)
  q = chosen.cross_attn.query(chosen._branch_in(y, chosen.cross_norm))
  q = q * q.shape[-1] ** -0.5  # [batch, tgt_len, heads, head_dim]
  keys, _ = chosen.cross_attn.project_kv(encoded)  # [batch, heads, src_len, head_dim]
  logits = jnp.einsum("bqhd,bhkd->bhqk", q, keys, preferred_element_type=jnp.float32)
  logits = jnp.where(cross_mask, logits, jnp.finfo(jnp.float32).min)
  return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)  # [batch, tgt, src]


cross_attention_jit = jax.jit(cross_attention, static_argnums=0,
                              static_argnames=("layer",))


def hard_alignment(weights: np.ndarray, source: list[int], target: list[int],
                   special: tuple[int, ...]) -> list[tuple[int, int]]:
  """(i, j) pairs: for each target token j not in `special` (EOS, pad), the source
  token i (not in `special`) it attends to most. weights [tgt_len, src_len]."""
  src_ok = np.array([t not in special for t in source] +
                    [False] * (weights.shape[1] - len(source)))
  pairs = []
  for j, token in enumerate(target):
    if token in special or not src_ok.any():
      continue
    pairs.append((int(np.argmax(np.where(src_ok, weights[j], -np.inf))), j))
  return pairs


def pharaoh(pairs: list[tuple[int, int]]) -> str:
  """'i-j i-j ...' (source index, target index)."""
  return " ".join(f"{i}-{j}" for i, j in pairs)
