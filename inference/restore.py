"""Restore for inference: the run's config and tokenizer, and parameters only.

Training checkpoints hold `params`, `optimizer` and `data` items
(training/checkpoints.py); inference reads the `params` item alone, onto the inference
mesh, cast to the inference dtype. Checkpoint averaging writes a new checkpoint holding
only `params`, which the same code restores.
"""
import dataclasses
import json

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from data import tokenizer as tokenizer_lib
from models import transformer
from parallel import sharding
from training import checkpoints


@dataclasses.dataclass(frozen=True)
class Restored:
  """A frozen model as pytrees: merge with `nnx.merge(graphdef, params, rest)`."""
  graphdef: nnx.GraphDef
  params: nnx.State
  rest: nnx.State
  model_config: transformer.TransformerConfig
  step: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config that `train.py` wrote to `workdir/config.json`."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a training workdir. Train one with"
        f" `python train.py --config=configs/default.py --workdir={workdir}`.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_tokenizer(workdir: str) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer.load(epath.Path(workdir) / tokenizer_lib.MODEL_FILENAME)


def _manager(directory: epath.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True))


def checkpoint_steps(directory: str) -> list[int]:
  directory = epath.Path(directory)
  return sorted(_manager(directory).all_steps()) if directory.exists() else []


def _make(model_config):
  return lambda: transformer.Transformer(model_config, rngs=nnx.Rngs(0))


def abstract_params(model_config, mesh, rules):
  """(graphdef, params as ShapeDtypeStructs carrying their shardings): no allocation."""
  graphdef, params, _ = nnx.split(nnx.eval_shape(_make(model_config)), nnx.Param, ...)
  shardings = sharding.state_sharding(params, mesh, rules)
  return graphdef, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)


def rng_state(model_config, mesh):
  """The model's non-parameter state (RNG streams), replicated.

  XLA drops the parameter initialisers from this jitted function: only the tiny RNG
  state is computed.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda: nnx.split(_make(model_config)(), nnx.Param, ...)[2],
                 out_shardings=replicated)()


def restore_params(workdir: str, mesh, *, step: int | None = None,
                   checkpoint_dir: str | None = None, dtype: str | None = None
                   ) -> Restored:
  """Parameters of `step` (default: the latest) from a training or averaged checkpoint.

  `dtype` (e.g. 'bfloat16') sets both the compute dtype and the dtype the parameters
  are cast to; default: the training config's compute and parameter dtypes.
  """
  config = load_config(workdir)
  directory = (checkpoints.checkpoint_dir(workdir) if checkpoint_dir is None
               else checkpoints.absolute(checkpoint_dir))
  steps = checkpoint_steps(directory)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {directory}. Train one with `python train.py"
        f" --config=configs/default.py --workdir={workdir}`.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"No checkpoint for step {step} in {directory}; it has {steps}.")
  rules = sharding.normalize_rules(config.logical_axis_rules)
  model_config = transformer.TransformerConfig.from_config(
      config.model, load_tokenizer(workdir).vocab_size)
  _, abstract = abstract_params(model_config, mesh, rules)
  params = _manager(directory).restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract))).params
  if dtype:  # Stored in the training dtype, served in this one.
    model_config = dataclasses.replace(model_config, dtype=dtype, param_dtype=dtype)
    params = jax.tree.map(lambda x: x.astype(dtype)
                          if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  graphdef, _ = abstract_params(model_config, mesh, rules)
  rest = rng_state(model_config, mesh)
  logging.info("Restored the parameters of step %d from %s.", step, directory)
  return Restored(graphdef=graphdef, params=params, rest=rest,
                  model_config=model_config, step=step)


def average_checkpoints(workdir: str, mesh, last_n: int) -> epath.Path:
  """Writes the element-wise mean of the last `last_n` checkpoints' parameters.

  The result is a params-only checkpoint in `workdir/averaged_last<N>/<last step>/`,
  restored by `restore_params(..., checkpoint_dir=...)` like any other.
  """
  directory = checkpoints.checkpoint_dir(workdir)
  steps = checkpoint_steps(directory)[-last_n:]
  if len(steps) < last_n:
    raise ValueError(f"--average_last={last_n}, but {directory} has only {len(steps)}"
                     f" checkpoints ({steps}). Lower it or train longer.")
  # The first restore builds the model's shapes; the others only read parameters.
  total = restore_params(workdir, mesh, step=steps[0]).params
  abstract, manager = checkpoints.abstract_like(total), _manager(directory)
  for step in steps[1:]:
    params = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract))).params
    total = jax.tree.map(jnp.add, total, params)
  mean = jax.tree.map(lambda x: x / len(steps), total)
  output = directory.parent / f"averaged_last{last_n}"
  manager = ocp.CheckpointManager(output, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  if steps[-1] in manager.all_steps():  # Averaged before: the same name, rewritten.
    manager.delete(steps[-1])
  manager.save(steps[-1], args=ocp.args.Composite(params=ocp.args.StandardSave(mean)),
               force=True)
  manager.close()
  logging.info("Averaged steps %s into %s/%d.", steps, output, steps[-1])
  return output
