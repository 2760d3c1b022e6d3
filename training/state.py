"""The train state's shapes and shardings, and the jitted steps: the project's one
builder of what a config trains.

`build_program` needs no data and creates no array: a compile-only tool lowers its
steps on `TrainProgram.abstract`, and `Trainer` runs the same program on real state
(`TrainProgram.init()`) and batches.
"""
from collections.abc import Callable
import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from data import tokenizer as tokenizer_lib
from models import transformer
from parallel import sharding
from parallel.sharding import Partitioner
from training import optimizer as optimizer_lib
from training import steps
from training.settings import TrainSettings

# (state, global batch) -> (new state, scalar metrics); the state is donated.
TrainStepFn = Callable[[steps.TrainState, dict[str, jax.Array]],
                       tuple[steps.TrainState, dict[str, jax.Array]]]
# (params, global batch) -> summed loss, correct tokens and tokens.
EvalStepFn = Callable[[nnx.State, dict[str, jax.Array]], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What one config trains, before any array or batch exists."""
  graphdef: nnx.GraphDef  # The Transformer's structure; merge with params.
  # ShapeDtypeStructs with shardings: the restore target, and the steps' shardings.
  abstract: steps.TrainState
  init: Callable[[], steps.TrainState]  # Jitted: a fresh state, made in its shards.
  train_step: TrainStepFn  # Each is `Partitioner.jit`'s wrapper; `.jitted` lowers.
  eval_step: EvalStepFn

  @property
  def shardings(self) -> steps.TrainState:
    return sharding.shardings_of(self.abstract)


def abstract_train_state(make_model: Callable[[], nnx.Module],
                         tx: optax.GradientTransformation, partitioner: Partitioner
                         ) -> tuple[nnx.GraphDef, steps.TrainState]:
  """(graphdef, the train state as ShapeDtypeStructs with shardings); no allocation.

  Shapes and shardings start from `Partitioner.abstract_params`; an optimizer moment
  shaped like its parameter (Adam's) takes the parameter's sharding, a factored one
  (Adafactor's row and column statistics) is replicated.
  """
  graphdef, abstract_params = partitioner.abstract_params(make_model)

  def like_param(x, p):
    where = p.sharding if x.shape == p.shape else partitioner.replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where)

  abstract_opt = optax.tree_map_params(
      tx, like_param, jax.eval_shape(tx.init, abstract_params), abstract_params,
      transform_non_params=lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=partitioner.replicated))
  return graphdef, steps.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated),
      params=abstract_params, opt_state=abstract_opt)


def build_program(config, vocab_size: int, partitioner: Partitioner) -> TrainProgram:
  """The train state's layout and the jitted steps of `config` on `partitioner`.

  Reads `config.model` (the network, with the tokenizer's `vocab_size`), the
  optimizer's fields and `TrainSettings`. Every array `init` makes is created
  directly in its own shard; the train step donates the state it is given.
  """
  settings = TrainSettings.from_config(config)
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=vocab_size, pad_id=tokenizer_lib.PAD_ID)
  make_model = model_cfg.make_model(settings.seed)
  tx = optimizer_lib.create_optimizer(config)
  graphdef, abstract = abstract_train_state(make_model, tx, partitioner)
  shardings = sharding.shardings_of(abstract)

  def init():
    params = nnx.split(make_model(), nnx.Param)[1]
    return steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                            opt_state=tx.init(params))

  batch_sharding = partitioner.batch_sharding()
  train_step = partitioner.jit(
      functools.partial(
          steps.train_step, graphdef=graphdef, tx=tx,
          schedule=optimizer_lib.schedule_from_config(config), seed=settings.seed,
          dropout_rng_impl=settings.dropout_rng_impl,
          label_smoothing=settings.label_smoothing),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
      donate_argnums=0)
  eval_step = partitioner.jit(
      functools.partial(steps.eval_step, graphdef=graphdef),
      in_shardings=(shardings.params, batch_sharding))
  return TrainProgram(graphdef=graphdef, abstract=abstract,
                      init=partitioner.jit(init, out_shardings=shardings),
                      train_step=train_step, eval_step=eval_step)
