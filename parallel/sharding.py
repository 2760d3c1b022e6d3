"""Logical-axis sharding: one rules table maps the model's axis names to mesh axes.

Parameters carry logical names (`nnx.with_partitioning(init, ('embed', 'mlp'))`) and
activations get `with_logical_constraint(x, ('batch', 'length', 'embed'))`; the table
below (or `config.logical_axis_rules`) decides which mesh axes those names use, so a
new parallelism layout is a config change, not a model change. A `Partitioner` carries
the mesh and the rules together: everything that shards, traces or compiles model code
goes through one, so both phases always apply the same policy.

Rules are resolved T5X style (`flax.linen.logical_to_mesh_axes`): in table order, a
name takes its mesh axes only if no other dimension of the same array already uses
them, and a name without a rule is not sharded. That is why 'embed' -> 'fsdp' shards
parameters but leaves activations' embed dimension whole: their 'batch' took 'fsdp'.
"""
import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx
from flax.core import spmd as flax_spmd
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from parallel import mesh as mesh_lib

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


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation by logical names; a no-op outside a mesh.

  The mesh and rules are those of the active `Partitioner` (`Partitioner.activate`);
  DEFAULT_RULES under a bare `jax.set_mesh`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(names, shape=x.shape, mesh=mesh)
  if mesh.are_all_axes_explicit:  # There the constraint would be an assertion.
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """The sharding policy of a run: a device mesh and the logical-axis rules onto it.

  One object travels through training, evaluation and inference; `activate()` (and
  every function compiled with `jit`) makes both current, so parameters, batches and
  activation constraints can never be laid out by two different tables.
  """
  mesh: jax.sharding.Mesh
  rules: tuple = DEFAULT_RULES

  def __post_init__(self):
    object.__setattr__(self, "rules", normalize_rules(self.rules))

  @classmethod
  def from_config(cls, config, devices=None) -> "Partitioner":
    """From `config.mesh_shape` and `config.logical_axis_rules`."""
    return cls(mesh_lib.create_mesh(config.mesh_shape, devices),
               config.logical_axis_rules)

  @contextlib.contextmanager
  def activate(self):
    """Makes the mesh (`jax.set_mesh`) and the rules current, for tracing model code."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def jit(self, fn: Callable, **jit_kwargs) -> Callable:
    """`jax.jit(fn, **jit_kwargs)` that always traces and runs under `activate()`."""
    jitted = jax.jit(fn, **jit_kwargs)

    def call(*args, **kwargs):
      with self.activate():
        return jitted(*args, **kwargs)
    call.jitted = jitted  # The jax.jit object itself, e.g. for `.lower(...)`.
    return call

  def spec(self, names: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
    """PartitionSpec of an array with logical axis `names` (see `logical_to_spec`)."""
    return logical_to_spec(names, self.rules, shape, self.mesh)

  def sharding(self, names: Sequence[str | None],
               shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(names, shape))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def batch_sharding(self, shape: Sequence[int] | None = None) -> NamedSharding:
    """Input arrays [batch, length]: rows over ('data', 'fsdp') as far as they divide."""
    return self.sharding(("batch", "length"), shape)

  def batch_shards(self) -> int:
    """How many ways a batch's rows split: a row count divisible by it splits evenly."""
    axes = self.spec(("batch",), (self.mesh.size,))[0] or ()
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[a] for a in axes)

  def replicated_over(self, tree: Any, axis: str) -> Any:
    """The shardings of `tree`'s arrays with mesh `axis` dropped: whole across it.

    E.g. serving on an FSDP mesh: parameters replicated over 'fsdp' are gathered
    once, not at every decoder step. Works on arrays and ShapeDtypeStructs alike.
    """
    def drop(entry):
      axes = tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ())
                   if a != axis)
      return axes[0] if len(axes) == 1 else (axes or None)

    def leaf(x):  # Arrays not laid out on a mesh (e.g. on one device): replicated.
      sharding = getattr(x, "sharding", None)
      if not isinstance(sharding, NamedSharding):
        return self.replicated
      return NamedSharding(self.mesh, P(*map(drop, sharding.spec)))
    return jax.tree.map(leaf, tree)

  def state_shardings(self, tree: Any):
    """NamedSharding per leaf of an NNX state (abstract or concrete), from its names.

    Variables keep their container so the result can serve as `jax.jit(...,
    out_shardings=...)` for a function returning that state; leaves without logical
    names are replicated.
    """
    def leaf_sharding(x):
      if isinstance(x, nnx.Variable):
        names = x.get_metadata().get("out_sharding")
        shape = getattr(x.get_value(), "shape", ())
        return x.replace(self.sharding(names, shape) if names else self.replicated)
      return self.replicated
    return jax.tree.map(leaf_sharding, tree,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))

  def abstract_params(self, make_model: Callable[[], nnx.Module]
                      ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params as ShapeDtypeStructs carrying their shardings), no allocation.

    The one place shapes and shardings come from: train-state creation, params-only
    restore, checkpoint averaging and the tests all start here. `make_model` builds
    the model with its own `nnx.Rngs`; a model whose state holds anything but
    `nnx.Param` (e.g. RNG streams kept by a layer) is an error.
    """
    graphdef, params = nnx.split(nnx.eval_shape(make_model), nnx.Param)
    return graphdef, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        params, self.state_shardings(params))

  def init_params(self, make_model: Callable[[], nnx.Module]
                  ) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) with each parameter created directly in its own shard.

    The initializer runs under `jax.jit` with `out_shardings` from the logical names,
    so no device ever holds the whole model.
    """
    graphdef, abstract = self.abstract_params(make_model)
    init = self.jit(lambda: nnx.split(make_model(), nnx.Param)[1],
                    out_shardings=shardings_of(abstract))
    return graphdef, init()


def shardings_of(abstract: Any):
  """The `.sharding` of every leaf of a tree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: x.sharding, abstract)
