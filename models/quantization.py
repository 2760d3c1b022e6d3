"""Post-training int8 quantization of a frozen Transformer, for inference only.

Every dense layer (attention projections, MLP, the output projection, tied or not)
and every embedding table gets int8 weights, symmetric, one scale per output channel
(per token for a table), computed once at load.
Two ways to use them:
  int8          activations are quantized per row on the fly and the dots run
                int8 x int8 -> int32; XLA:CPU hands those to a library int8 GEMM
                (VNNI on x86), the fast path on CPU.
  int8_weights  weight-only: the int8 weights are converted in the dot's dtype and
                the scale applied to the output; on GPU/TPU XLA fuses the convert
                into the dot, so the weights stream at a quarter of the bytes.
Attention scores, softmax and layer norms stay in floating point; an embedding lookup
dequantizes the rows it reads.
Training never sees any of this: `quantize` rewrites a restored model's modules.
"""
import math

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
MODES = ("int8", "int8_weights")
_INT8_MAX = 127.0


class QuantizedWeight(nnx.Variable):
  """A frozen int8 kernel or its scales: parameters, but not trained."""


def quantize_weight(w: Array) -> tuple[Array, Array]:
  """w [in, out] -> (int8 [in, out], float32 scale [out]); w ~= q * scale.

  Symmetric and per output channel: scale = max |w[:, j]| / 127, so every channel
  uses the whole int8 range however its magnitude differs from the others'.
  """
  w = w.astype(jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=0) / _INT8_MAX  # [out]
  scale = jnp.where(scale == 0, 1.0, scale)  # An all-zero channel stays zero.
  q = jnp.clip(jnp.round(w / scale), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
  return q, scale


def int8_dot(x: Array, kernel: Array, scale: Array, *, quantize_inputs: bool) -> Array:
  """x [..., in] @ (kernel int8 [in, out] * scale [out]) -> float32 [..., out].

  With `quantize_inputs`, each row of x is scaled into int8 by its own max |x| and
  the dot accumulates in int32; otherwise the kernel is converted to x's dtype.
  """
  if not quantize_inputs:
    return jnp.dot(x, kernel.astype(x.dtype),
                   preferred_element_type=jnp.float32) * scale
  x = x.astype(jnp.float32)
  x_max = jnp.max(jnp.abs(x), axis=-1, keepdims=True)  # [..., 1]
  x_max = jnp.where(x_max == 0, _INT8_MAX, x_max)
  xq = jnp.round(x * (_INT8_MAX / x_max)).astype(jnp.int8)
  acc = lax.dot_general(xq, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                        preferred_element_type=jnp.int32)  # [..., out]
  return acc.astype(jnp.float32) * (x_max / _INT8_MAX) * scale


class Int8Linear(nnx.Module):
  """A frozen `nnx.Linear` or `nnx.LinearGeneral` with int8 weights.

  The kernel is kept as a matrix [prod(in_features), prod(out_features)]; the
  input's trailing feature axes are flattened into its rows and the output
  reshaped back, so the layer computes what the float one did.
  """

  def __init__(self, layer: nnx.Linear | nnx.LinearGeneral, mode: str):
    kernel = layer.kernel[...]
    if isinstance(layer, nnx.LinearGeneral):
      in_dims, axis = len(layer.in_features), tuple(layer.axis)
      if axis != tuple(range(-in_dims, 0)) or layer.batch_axis:
        raise NotImplementedError(
            f"LinearGeneral with axis={layer.axis}, batch_axis={layer.batch_axis}:"
            " only layers contracting the trailing axes are quantized.")
    else:
      in_dims = 1
    self.out_shape = tuple(kernel.shape[in_dims:])
    self.in_dims = in_dims
    matrix = kernel.reshape(math.prod(kernel.shape[:in_dims]), -1)
    q, scale = quantize_weight(matrix)
    self.kernel = QuantizedWeight(q)  # int8 [in, out]
    self.scale = QuantizedWeight(scale)  # [out]
    self.bias = (None if layer.bias is None
                 else QuantizedWeight(layer.bias[...].reshape(-1).astype(jnp.float32)))
    self.dtype = layer.dtype or jnp.float32
    self.quantize_inputs = mode == "int8"

  def output_weights(self) -> tuple[Array, Array, Array | None]:
    """(int8 kernel [in, out], scale [out], bias [out] or None): as an output table."""
    return self.kernel[...], self.scale[...], (
        None if self.bias is None else self.bias[...])

  def __call__(self, x: Array) -> Array:
    lead = x.shape[:x.ndim - self.in_dims]
    y = int8_dot(x.reshape(*lead, -1), self.kernel[...], self.scale[...],
                 quantize_inputs=self.quantize_inputs)  # [..., out]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.reshape(*lead, *self.out_shape).astype(self.dtype)


class Int8Embed(nnx.Module):
  """A frozen shared embedding as one int8 table [embed, vocab], a scale per token.

  The logits projection reads the whole table every decoder step, as an int8 dot,
  so the table is laid out [embed, vocab] once here rather than transposed per call;
  a lookup reads one column per token and dequantizes it. One table serves both,
  as in the float model: no float copy is kept.
  """

  def __init__(self, embed: nnx.Embed, mode: str):
    q, scale = quantize_weight(embed.embedding[...].T)
    self.output_kernel = QuantizedWeight(q)  # int8 [embed, vocab]
    self.output_scale = QuantizedWeight(scale)  # [vocab]
    self.dtype = embed.dtype or jnp.float32
    self.quantize_inputs = mode == "int8"

  def output_weights(self) -> tuple[Array, Array, None]:
    """(int8 kernel [embed, vocab], scale [vocab], no bias): the output table."""
    return self.output_kernel[...], self.output_scale[...], None

  def __call__(self, tokens: Array) -> Array:
    columns = jnp.take(self.output_kernel[...], tokens, axis=1)  # [embed, *tokens]
    rows = jnp.moveaxis(columns, 0, -1).astype(jnp.float32)  # [*tokens, embed]
    return (rows * self.output_scale[...][tokens][..., None]).astype(self.dtype)

  def attend(self, y: Array) -> Array:
    """[..., embed] -> float32 logits [..., vocab]."""
    return int8_dot(y, self.output_kernel[...], self.output_scale[...],
                    quantize_inputs=self.quantize_inputs)


class Int8Lookup(nnx.Module):
  """A frozen embedding used only for lookups (untied source or target table):
  int8 [vocab, embed] with a scale per token, dequantized row by row."""

  def __init__(self, embed: nnx.Embed):
    q, scale = quantize_weight(embed.embedding[...].T)  # Scales per token.
    self.table = QuantizedWeight(q.T)  # int8 [vocab, embed]
    self.scale = QuantizedWeight(scale)  # [vocab]
    self.dtype = embed.dtype or jnp.float32

  def __call__(self, tokens: Array) -> Array:
    rows = jnp.take(self.table[...], tokens, axis=0).astype(jnp.float32)
    return (rows * self.scale[...][tokens][..., None]).astype(self.dtype)


def _replace_modules(model: nnx.Module, mode: str) -> int:
  """Swaps every dense layer (and a shared embedding) of `model` in place."""
  swaps = []
  for path, module in nnx.iter_graph(model):
    if not path or not isinstance(module, nnx.Module):
      continue
    if isinstance(module, (nnx.Linear, nnx.LinearGeneral)):
      swaps.append((path, Int8Linear(module, mode)))
    elif isinstance(module, nnx.Embed):
      tied = path == ("embed",) and getattr(model, "logits_dense", True) is None
      swaps.append((path, Int8Embed(module, mode) if tied else Int8Lookup(module)))
  for path, new in swaps:
    parent = model
    for key in path[:-1]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
      parent[path[-1]] = new
    else:
      setattr(parent, path[-1], new)
  return len(swaps)


def quantize(graphdef: nnx.GraphDef, params: nnx.State, mode: str | None
             ) -> tuple[nnx.GraphDef, nnx.State]:
  """A frozen model's (graphdef, params) with int8 layers; `mode` None: unchanged.

  The new graphdef names the int8 modules, so `nnx.merge` inside the jitted
  decoder builds the quantized model from the pure pytree as it does the float one.
  """
  if mode is None or mode == "none":
    return graphdef, params
  if mode not in MODES:
    raise ValueError(f"quantize={mode!r}; expected one of {MODES} (or none).")
  model = nnx.merge(graphdef, params)
  if not _replace_modules(model, mode):
    raise ValueError("No dense layer to quantize in this model.")
  return nnx.split(model)


def weight_bytes(params: nnx.State) -> int:
  """Bytes of every parameter array (int8 weights count one byte each)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))

