"""Beam search over the Transformer's incremental decoder, as one jitted XLA program.

The encoder runs once per batch and every decoder layer's cross-attention keys/values
are projected once per sentence. They are not tiled over the beam: the beams of a
sentence become the query axis of cross-attention (`MultiHeadAttention.attend`), so a
[batch * beam] decoder attends to [batch] keys/values. Self-attention keys/values go
into a cache preallocated for `max_decode_len` positions, written in place and never
reordered: each beam slot keeps its own entries and attention masks them to each
hypothesis's ancestors (`DecodeCache`). The output projection reads an
[embed, vocab] table laid out once per call.

The search itself (models/search.py) knows nothing of the model: this module gives it
`Transformer.decode_step` as its step function. The special ids are not declared
here: the pad id (also the decoder's start token) is the model's `cfg.pad_id`, and
callers pass the tokenizer's `eos_id`.
"""
from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from models import search
from models.search import Decoded
from parallel.sharding import Partitioner

Array = jax.Array


def max_lengths(inputs: Array, max_len_a: Array, max_len_b: Array,
                max_decode_len: int, pad_id: int) -> Array:
  """[batch] int32 per-sentence max output length, EOS included: a * src_len + b.

  src_len counts non-pad source tokens, so padding does not change it; the result is
  clipped to [1, max_decode_len].
  """
  src_len = jnp.sum(inputs != pad_id, axis=-1).astype(jnp.float32)  # [batch]
  limit = jnp.floor(max_len_a * src_len + max_len_b)
  return jnp.clip(limit, 1, max_decode_len).astype(jnp.int32)


def beam_search(graphdef: nnx.GraphDef, params: nnx.State, inputs: Array,
                alpha: float | Array, max_len_a: float | Array,
                max_len_b: float | Array, *, eos_id: int, beam_size: int,
                max_decode_len: int, nbest: int = 1, forced_len: int | None = None
                ) -> Decoded:
  """Translates source rows inputs [batch, src_len] (0-padded) into n-best lists.

  graphdef/params: `nnx.split(model)`. `alpha`, `max_len_a` and `max_len_b` are traced,
  so new values reuse the compilation (pass them as floats every time: an int has
  another type and compiles anew); `eos_id`, `beam_size`, `max_decode_len`, `nbest`
  and `forced_len` are static. `forced_len` is benchmark mode: EOS is suppressed and
  every hypothesis runs to exactly `forced_len` tokens (`max_len_a/b` are ignored),
  so decoders can be compared on identical work.
  Compile it with `Partitioner.jit` (see `jit_beam_search`) so that it traces under
  the run's mesh and rules; `beam_search_jit` is the same without a mesh.
  """
  if forced_len is not None and not 1 <= forced_len <= max_decode_len:
    raise ValueError(f"forced_len={forced_len} must be between 1 and "
                     f"max_decode_len={max_decode_len}.")
  model = nnx.merge(graphdef, params)
  if max_decode_len > model.cfg.max_len:
    raise ValueError(f"max_decode_len={max_decode_len} exceeds model.max_len="
                     f"{model.cfg.max_len}, beyond which positions are clipped; "
                     "lower it.")
  batch = inputs.shape[0]
  if forced_len is None:
    max_len = max_lengths(inputs, jnp.asarray(max_len_a, jnp.float32),
                          jnp.asarray(max_len_b, jnp.float32), max_decode_len,
                          model.cfg.pad_id)
  else:
    max_len = jnp.full((batch,), forced_len, jnp.int32)
  cross_kv = model.precompute_cross_kv(model.encode(inputs))  # [batch, heads, src, kv]
  output_table = model.output_table()  # [embed, vocab], laid out once per call.
  src_mask = inputs != model.cfg.pad_id  # [batch, src_len]

  def step_fn(tokens, t, cache):
    return model.decode_step(tokens, t, cache, cross_kv, src_mask, output_table)

  return search.search(
      step_fn, model.init_cache(batch, max_decode_len, beam_size), max_len,
      jnp.asarray(alpha, jnp.float32), batch=batch, beam_size=beam_size,
      max_decode_len=max_decode_len,
      num_steps=max_decode_len if forced_len is None else forced_len,
      eos_id=eos_id, pad_id=model.cfg.pad_id, nbest=nbest,
      suppress_eos=forced_len is not None)


_STATIC = ("eos_id", "beam_size", "max_decode_len", "nbest", "forced_len")


def jit_beam_search(partitioner: Partitioner) -> Callable[..., Decoded]:
  """`beam_search` compiled under `partitioner`'s mesh and rules (graphdef static)."""
  return partitioner.jit(beam_search, static_argnums=0, static_argnames=_STATIC)


# Without a mesh (one device, or a caller's own `jax.set_mesh`): DEFAULT_RULES.
beam_search_jit = jax.jit(beam_search, static_argnums=0, static_argnames=_STATIC)
