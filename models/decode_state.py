"""What beam search carries between steps: the self-attention cache, the source's
cross-attention keys/values and the output projection, as plain pytrees.

`Transformer.init_cache`, `precompute_cross_kv` and `output_table` build them;
`Transformer.decode_step` reads and updates them inside a `lax.while_loop`.
"""
import flax
import jax
import jax.numpy as jnp

from models import quantization

Array = jax.Array

KEY_AXES = ("batch", "heads", "kv", "length")  # Logical axes of cached keys...
VALUE_AXES = ("batch", "heads", "length", "kv")  # ...and values.


@flax.struct.dataclass
class DecodeCache:
  """Self-attention keys/values of the positions decoded so far, never moved.

  Beam search moves hypotheses between the beam slots of their sentence at every
  step. Copying every layer's keys/values after them would move the whole cache per
  step; instead each slot keeps what it wrote, and `slots` records, per hypothesis
  and position, which slot of the sentence holds its ancestor's entry. Attention
  reads the sentence's max_decode_len * beam keys once, masked to those ancestors
  (`ancestor_mask`), and following the beam moves `slots` alone (`reorder`).
  Key p * beam + s holds position p of slot s: a step writes one block, and
  attention reads the array as it lies (a reshaped view of a buffer the loop
  updates in place makes XLA copy it). Keys are kept transposed (`transpose_keys`).
  """
  k: tuple[Array, ...]  # per layer [batch, heads, head_dim, max_decode_len * beam]
  v: tuple[Array, ...]  # per layer [batch, heads, max_decode_len * beam, head_dim]
  slots: Array  # [batch, beam, max_decode_len] int32: slot holding each ancestor's K/V

  def reorder(self, parent: Array) -> "DecodeCache":
    """Hypothesis j of each sentence now continues hypothesis parent [batch, beam][j]."""
    return self.replace(slots=jnp.take_along_axis(self.slots, parent[..., None], axis=1))

  def ancestor_mask(self, step_index: Array) -> Array:
    """[batch, 1, beam, max_decode_len * beam] bool: the keys each hypothesis reads.

    Key p * beam + s is visible to hypothesis j when p <= step_index and j's
    ancestor at position p wrote slot s.
    """
    batch, beam, max_len = self.slots.shape
    written = (jnp.arange(max_len) <= step_index)[:, None]  # [max_len, 1]
    mask = (self.slots[..., None] == jnp.arange(beam)) & written  # [b, j, p, s]
    return mask.reshape(batch, 1, beam, max_len * beam)


@flax.struct.dataclass
class OutputTable:
  """The output projection as decoding reads it: logits = y @ (kernel * scale) + bias."""
  kernel: Array  # [embed, vocab], float or int8 (models/quantization.py)
  bias: Array | None  # [vocab], or None for the tied embedding
  scale: Array | None = None  # [vocab] per-column scale of an int8 kernel
  # int8 kernels: quantize y per row too and take the int8 x int8 dot.
  quantize_inputs: bool = flax.struct.field(pytree_node=False, default=False)

  def project(self, y: Array) -> Array:
    """y [..., embed] -> logits [..., vocab] in y's dtype."""
    if self.scale is None:
      logits = jnp.dot(y, self.kernel.astype(y.dtype))
    else:
      logits = quantization.int8_dot(y, self.kernel, self.scale,
                                     quantize_inputs=self.quantize_inputs)
    if self.bias is not None:
      logits = logits + self.bias.astype(logits.dtype)
    return logits.astype(y.dtype)

  def restrict(self, ids: Array, allowed: Array) -> "ShortlistTable":
    """The projection onto a batch's shortlist (inference/shortlist.py): ids [S]
    int32 target ids (-1: padding), allowed [batch, S] bool each sentence's own.

    Built once per decode call, outside the loop: the columns are gathered (int8
    ones stay int8), so each step reads [embed, S], not [embed, vocab]; a sentence's
    slots outside its own candidates get logit -inf.
    """
    columns = jnp.maximum(ids, 0)  # [S]
    table = self.replace(
        kernel=jnp.take(self.kernel, columns, axis=1),
        scale=None if self.scale is None else jnp.take(self.scale, columns),
        bias=None if self.bias is None else jnp.take(self.bias, columns))
    return ShortlistTable(table=table, mask=jnp.where(allowed, 0.0, -jnp.inf))


@flax.struct.dataclass
class ShortlistTable:
  """The output projection over a batch's shortlist (`OutputTable.restrict`): logits
  [rows, ..., S], rows = batch * hypotheses, -inf outside each sentence's own."""
  table: OutputTable  # kernel [embed, S]
  mask: Array  # [batch, S] float32: 0 for the sentence's candidates, else -inf

  def project(self, y: Array) -> Array:
    """y [rows, ..., embed] (rows sentence-major) -> logits [rows, ..., S]."""
    logits = self.table.project(y)  # [rows, ..., S]
    batch, width = self.mask.shape
    grouped = logits.reshape(batch, -1, width) + self.mask[:, None, :].astype(
        logits.dtype)
    return grouped.reshape(logits.shape)


@flax.struct.dataclass
class CrossKV:
  """Cross-attention keys/values of the encoded source, computed once per sentence."""
  k: tuple[Array, ...]  # per decoder layer [batch, heads, head_dim, src_len]
  v: tuple[Array, ...]  # per decoder layer [batch, heads, src_len, head_dim]
