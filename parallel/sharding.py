"""Logical-axis sharding: one rules table maps the model's axis names to mesh axes.

Parameters carry logical names (`nnx.with_partitioning(init, ('embed', 'mlp'))`) and
activations get `with_logical_constraint(x, ('batch', 'length', 'embed'))`; the table
below (or `config.logical_axis_rules`) decides which mesh axes those names use, so a
new parallelism layout is a config change, not a model change.

Rules are resolved T5X style (`flax.linen.logical_to_mesh_axes`): in table order, a
name takes its mesh axes only if no other dimension of the same array already uses
them, and a name without a rule is not sharded. That is why 'embed' -> 'fsdp' shards
parameters but leaves activations' embed dimension whole: their 'batch' took 'fsdp'.
"""
import contextlib
import functools
import math
from collections.abc import Callable, Sequence

from flax import nnx
from flax.core import spmd as flax_spmd
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

LogicalRules = Sequence[tuple[str, str | Sequence[str] | None]]

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),  # Data parallel; FSDP also splits the batch.
    ("length", None),             # Sequences stay whole on each device.
    ("vocab", "tensor"),          # Embedding rows / logits columns.
    ("embed", "fsdp"),            # Model width of parameters (FSDP/ZeRO-3).
    ("heads", "tensor"),          # Attention heads (Megatron tensor parallel).
    ("kv", None),                 # Per-head width.
    ("mlp", "tensor"),            # Feed-forward hidden width.
)


def normalize_rules(rules: LogicalRules) -> tuple:
  """Rules as nested tuples: a config read back from JSON holds lists instead."""
  return tuple((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in rules)


def current_rules() -> tuple:
  """The rules of the enclosing `nnx.logical_axis_rules` context, else DEFAULT_RULES."""
  return normalize_rules(flax_spmd.get_logical_axis_rules() or DEFAULT_RULES)


def logical_to_spec(names: Sequence[str | None], rules: LogicalRules | None = None,
                    shape: Sequence[int] | None = None, mesh=None) -> P:
  """PartitionSpec for an array whose dimensions have logical `names`.

  With `shape` and `mesh`, mesh axes the mesh lacks are dropped, and trailing mesh
  axes are dropped from a dimension until its size divides evenly (e.g. a batch of 4
  on data=4, fsdp=2 is split over 'data' only), so odd shapes degrade to less
  sharding instead of failing to compile.
  """
  rules = current_rules() if rules is None else normalize_rules(rules)
  spec = list(nn.logical_to_mesh_axes(tuple(names), rules))
  if mesh is None:
    return P(*spec)
  for i, axes in enumerate(spec):
    if axes is None:
      continue
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes)
                 if a in mesh.shape)
    if shape is not None:
      while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    spec[i] = None if not axes else axes[0] if len(axes) == 1 else axes
  return P(*spec)


def state_sharding(tree, mesh: jax.sharding.Mesh, rules: LogicalRules | None = None):
  """NamedSharding per leaf of an NNX state (abstract or concrete), from its names.

  Variables keep their container so the result can serve as `jax.jit(...,
  out_shardings=...)` for a function returning that state; leaves without logical
  names (RNG keys, counters, plain arrays) are replicated.
  """
  def leaf_sharding(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding")
      shape = getattr(x.get_value(), "shape", ())
      spec = logical_to_spec(names, rules, shape, mesh) if names else P()
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())
  return jax.tree.map(leaf_sharding, tree,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh, rules: LogicalRules | None = None
                   ) -> NamedSharding:
  """Sharding of the [batch, length] input arrays: batch over ('data', 'fsdp')."""
  rules = DEFAULT_RULES if rules is None else rules
  return NamedSharding(mesh, logical_to_spec(("batch", "length"), rules, mesh=mesh))


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation by logical names; a no-op outside a mesh.

  The mesh comes from `jax.set_mesh` and the rules from `nnx.logical_axis_rules`
  (DEFAULT_RULES if none is set); see `use_mesh`, which sets both.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(names, shape=x.shape, mesh=mesh)
  if mesh.are_all_axes_explicit:  # There the constraint would be an assertion.
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules: LogicalRules | None = None):
  """Makes `mesh` and `rules` current for tracing model code (jit traces inside)."""
  rules = DEFAULT_RULES if rules is None else normalize_rules(rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    yield


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                         rules: LogicalRules | None = None) -> nnx.Module:
  """Builds `make_model()` with each parameter created directly in its shard.

  The initializer runs under `jax.jit` with `out_shardings` from the logical names,
  so no device ever holds the whole model. `make_model` must create its own
  `nnx.Rngs` (e.g. `lambda: Transformer(cfg, rngs=nnx.Rngs(seed))`).
  """
  rules = DEFAULT_RULES if rules is None else normalize_rules(rules)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  shardings = state_sharding(abstract_state, mesh, rules)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    return nnx.split(make_model())[1]

  with use_mesh(mesh, rules):
    state = init()
  return nnx.merge(graphdef, state)
