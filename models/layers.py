"""Transformer building blocks: attention, feed-forward block, positions, masks.

Every parameter is created through `partitioned(init, names)`, which attaches logical
axis names; `parallel.sharding` maps them to mesh axes with the config's rules.
"""
import functools
from collections.abc import Sequence

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from parallel.sharding import with_logical_constraint

Array = jax.Array
DEFAULT_KERNEL_INIT = nnx.initializers.xavier_uniform()
ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()


def partitioned(init, names: Sequence[str | None]):
  """`init` with logical axis names attached to the parameter it creates.

  `eager_sharding=False` turns off Flax 0.12's default of sharding each variable
  when it is created (which needs a mesh and rules even on one CPU). The model
  therefore builds anywhere; sharded copies come from
  `parallel.sharding.Partitioner.init_params` (jit with out_shardings).
  """
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def layer_norm(dim: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, dtype=dtype, param_dtype=param_dtype,
                       scale_init=partitioned(ONES, ("embed",)),
                       bias_init=partitioned(ZEROS, ("embed",)), rngs=rngs)


@functools.lru_cache(maxsize=16)
def sinusoid_table(max_len: int, dim: int) -> np.ndarray:
  """[max_len, dim] sin/cos position table (sin in the first half), Vaswani et al."""
  half = dim // 2
  inv_freq = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(max_len)[:, None] * inv_freq[None, :]  # [max_len, half]
  table = np.zeros((max_len, dim), np.float32)
  table[:, :half], table[:, half:2 * half] = np.sin(angles), np.cos(angles)
  return table


def position_embedding(positions: Array, max_len: int, dim: int, dtype) -> Array:
  """[batch, length] positions -> [batch, length, dim]; positions >= max_len clip."""
  table = jnp.asarray(sinusoid_table(max_len, dim), dtype)
  return jnp.take(table, positions, axis=0, mode="clip")


def shift_right(targets: Array, segment_ids: Array | None, start_id: int) -> Array:
  """Decoder input: targets moved one step right, `start_id` first in every segment."""
  shifted = jnp.pad(targets, ((0, 0), (1, 0)),
                    constant_values=start_id)[:, :-1]  # [batch, length]
  if segment_ids is not None:  # The first token of every packed segment too.
    prev = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(segment_ids == prev, shifted, start_id)
  return shifted


def attention_mask(q_segments: Array, kv_segments: Array, causal: bool = False) -> Array:
  """[batch, 1, q_len, kv_len] bool: same segment, key not padding, (causal) key <= query.

  Segment ids are 1, 2, ... per packed sentence and 0 for padding; unpacked batches
  use `segment_ids = tokens != pad_id`, so one formula covers padding and packing.
  """
  mask = (q_segments[:, :, None] == kv_segments[:, None, :]) & (
      kv_segments[:, None, :] != 0)  # [batch, q_len, kv_len]
  if causal:
    q_len, kv_len = q_segments.shape[1], kv_segments.shape[1]
    mask &= jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
  return mask[:, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention_logits(spec: str, q: Array, k: Array) -> Array:
  """einsum(spec, q, k) in float32, differentiated by dots in q's dtype.

  JAX's transpose of a dot with preferred_element_type=float32 multiplies the float32
  cotangent by the bf16 operand: a float32 dot (twice the bytes per element on TPU).
  The backward pass here casts the cotangent to q's dtype first, so with bf16 compute
  every dot of the train step is bf16; with float32 nothing changes.
  """
  return jnp.einsum(spec, q, k, preferred_element_type=jnp.float32)


def _attention_logits_fwd(spec, q, k):
  return attention_logits(spec, q, k), (q, k)


def _attention_logits_bwd(spec, residuals, cotangent):
  q, k = residuals
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), q, k)
  return vjp(cotangent.astype(q.dtype))


attention_logits.defvjp(_attention_logits_fwd, _attention_logits_bwd)


class MultiHeadAttention(nnx.Module):
  """Multi-head dot-product attention with separate projections for reuse in decoding.

  `project_kv` and `attend` are split so that decoding projects cross-attention
  keys/values once per sentence and self-attention keys/values once per token.
  """

  def __init__(self, emb_dim: int, num_heads: int, qkv_dim: int, *, dropout_rate: float,
               dtype, param_dtype, rngs: nnx.Rngs):
    head_dim = qkv_dim // num_heads
    proj = functools.partial(
        nnx.LinearGeneral, emb_dim, (num_heads, head_dim), dtype=dtype,
        param_dtype=param_dtype, rngs=rngs,
        kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("embed", "heads", "kv")),
        bias_init=partitioned(ZEROS, ("heads", "kv")))
    # No key bias: it adds the same q.b to every logit of a query, which softmax
    # ignores, so its gradient is zero up to rounding noise that Adam would amplify.
    self.query, self.key, self.value = proj(), proj(use_bias=False), proj()
    self.out = nnx.LinearGeneral(
        (num_heads, head_dim), emb_dim, axis=(-2, -1), dtype=dtype,
        param_dtype=param_dtype, rngs=rngs,
        kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("heads", "kv", "embed")),
        bias_init=partitioned(ZEROS, ("embed",)))
    self.dropout = nnx.Dropout(dropout_rate)  # Keys come with each call.
    self.dtype = dtype

  def project_kv(self, x: Array) -> tuple[Array, Array]:
    """[batch, length, embed] -> keys, values, each [batch, heads, length, head_dim].

    Heads before length: the attention dots then contract contiguous rows, which on
    CPU is up to 10x faster for a one-token query against a long cache than the
    [batch, length, heads, head_dim] layout the projection produces.
    """
    return (jnp.swapaxes(self.key(x), 1, 2),  # [batch, heads, length, head_dim]
            jnp.swapaxes(self.value(x), 1, 2))

  def attend(self, x: Array, k: Array, v: Array, mask: Array, *,
             keys_transposed: bool = False, deterministic: bool = True,
             rngs=None) -> Array:
    """x [batch * group, q_len, embed] attends to k, v [batch, heads, kv_len, head_dim].

    group > 1 in beam search: the beams of a sentence share its keys/values, so
    they are stacked on the query axis instead of copying K/V. mask [batch, 1 or
    heads, q, kv_len]. With `keys_transposed`, k is [batch, heads, head_dim, kv_len],
    the layout decoding keeps (`transpose_keys`).
    """
    rows, q_len = x.shape[:2]
    batch = k.shape[0]
    x = x.reshape(batch, rows // batch * q_len, x.shape[-1])  # [batch, q, embed]
    q = self.query(x)  # [batch, q, heads, head_dim]
    q = q * q.shape[-1] ** -0.5
    logits = attention_logits("bqhd,bhdk->bhqk" if keys_transposed else "bqhd,bhkd->bhqk",
                              q, k)  # [batch, heads, q, kv] float32
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = self.dropout(weights, deterministic=deterministic, rngs=rngs)
    # Heads stay the leading batch axis of the output dot (a [batch, q, heads, dim]
    # output makes XLA:CPU pick a slower dot); swapping the small result is cheap.
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.astype(self.dtype))
    out = jnp.swapaxes(out, 1, 2)  # [batch, q, heads, head_dim]
    return self.out(out).reshape(rows, q_len, -1)  # [batch * group, q_len, embed]

  def __call__(self, x: Array, kv_input: Array, mask: Array, *,
               deterministic: bool = True, rngs=None) -> Array:
    k, v = self.project_kv(kv_input)
    return self.attend(x, k, v, mask, deterministic=deterministic, rngs=rngs)


class MlpBlock(nnx.Module):
  """Position-wise feed-forward block: Dense -> ReLU -> dropout -> Dense."""

  def __init__(self, emb_dim: int, mlp_dim: int, *, dropout_rate: float, dtype,
               param_dtype, rngs: nnx.Rngs):
    dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.wi = dense(emb_dim, mlp_dim,
                    kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("embed", "mlp")),
                    bias_init=partitioned(ZEROS, ("mlp",)))
    self.wo = dense(mlp_dim, emb_dim,
                    kernel_init=partitioned(DEFAULT_KERNEL_INIT, ("mlp", "embed")),
                    bias_init=partitioned(ZEROS, ("embed",)))
    self.dropout = nnx.Dropout(dropout_rate)  # Keys come with each call.

  def __call__(self, x: Array, *, deterministic: bool = True, rngs=None) -> Array:
    h = nnx.relu(self.wi(x))  # [batch, length, mlp]
    h = with_logical_constraint(h, ("batch", "length", "mlp"))
    h = self.dropout(h, deterministic=deterministic, rngs=rngs)
    return self.wo(h)  # [batch, length, embed]


def transpose_keys(k: Array) -> Array:
  """Keys [batch, heads, kv_len, head_dim] -> [batch, heads, head_dim, kv_len].

  Decoding keeps keys this way: a few queries against many keys then read them as
  the [head_dim, kv_len] operand of a plain matmul, which XLA:CPU runs faster
  than the same dot against [kv_len, head_dim] rows.
  """
  return jnp.swapaxes(k, 2, 3)


def update_cache(cache: Array, new: Array, index: Array, *,
                 keys_transposed: bool = False) -> Array:
  """Writes new [batch * beam, heads, 1, head_dim] at position `index` of the cache.

  cache: [batch, heads, max_decode_len * beam, head_dim] (with `keys_transposed`,
  [batch, heads, head_dim, max_decode_len * beam]); key p * beam + s holds position
  p of beam slot s, and row r of `new` is slot r % beam of sentence r // beam, so a
  step writes one block. Updated in place under jit.
  """
  batch, heads = cache.shape[:2]
  head_dim = new.shape[-1]
  beam = new.shape[0] // batch
  new = new.reshape(batch, beam, heads, head_dim).astype(cache.dtype)
  if keys_transposed:
    return lax.dynamic_update_slice(cache, new.transpose(0, 2, 3, 1),  # [b, h, d, beam]
                                    (0, 0, 0, index * beam))
  return lax.dynamic_update_slice(cache, new.swapaxes(1, 2),  # [b, h, beam, d]
                                  (0, 0, index * beam, 0))
