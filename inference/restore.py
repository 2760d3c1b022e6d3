"""Restore for inference: parameters only, onto the inference mesh, in its dtype.

Training checkpoints hold `params`, `optimizer` and `data` items (storage/layout.py);
inference reads the `params` item alone. Checkpoint averaging writes a new checkpoint
holding only `params`, which the same code restores. `random_params` makes the same
kind of model with random weights, for benchmarks and exports without a trained run.
"""
import dataclasses

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp

from data import tokenizer as tokenizer_lib
from models import quantization
from models import transformer
from parallel.sharding import Partitioner
from storage import files
from storage import layout


@dataclasses.dataclass(frozen=True)
class Restored:
  """A frozen model as pytrees: `nnx.merge(graphdef, params)` is the Transformer."""
  graphdef: nnx.GraphDef
  params: nnx.State
  model_config: transformer.TransformerConfig
  step: int | None  # The checkpoint's; None for random weights (`random_params`).


def model_config(workdir: str, config=None, tokenizer=None
                 ) -> transformer.TransformerConfig:
  """The model a workdir's checkpoints hold: its config.model and its tokenizer.

  `config` and `tokenizer`, when the caller has them, save reading (and hashing) them
  again.
  """
  config = layout.read_config(workdir) if config is None else config
  if tokenizer is None:
    tokenizer = tokenizer_lib.load_from_workdir(workdir)
  return transformer.TransformerConfig.from_config(
      config.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer_lib.PAD_ID)


def checkpoint_directory(workdir: str, checkpoint_dir: str | None = None
                         ) -> epath.Path:
  """WORKDIR/checkpoints, or `checkpoint_dir` (e.g. an averaged one) made absolute."""
  return (layout.checkpoint_dir(workdir) if checkpoint_dir is None
          else files.absolute(checkpoint_dir))


def choose_step(directory: epath.Path, workdir: str, step: int | None) -> int:
  """`step` if `directory` holds it, else its latest; an error says how to train one."""
  steps = layout.checkpoint_steps(directory)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {directory}. Train one with `python train.py"
        f" --config=configs/default.py --workdir={workdir}`.")
  if step is not None and step not in steps:
    raise ValueError(f"No checkpoint for step {step} in {directory}; it has {steps}.")
  return steps[-1] if step is None else step


def restore_params(workdir: str, partitioner: Partitioner, *, step: int | None = None,
                   checkpoint_dir: str | None = None, dtype: str | None = None,
                   quantize: str | None = None,
                   stored_config: transformer.TransformerConfig | None = None
                   ) -> Restored:
  """Parameters of `step` (default: the latest) from a training or averaged checkpoint.

  They are laid out by `partitioner` (its mesh and rules). `dtype` (e.g. 'bfloat16')
  sets both the compute dtype and the dtype the parameters are cast to; default: the
  training config's. `quantize` ('int8' or 'int8_weights', models/quantization.py)
  swaps the dense layers for int8 ones once restored. `stored_config` is
  `model_config(workdir)`, if the caller has it.
  """
  directory = checkpoint_directory(workdir, checkpoint_dir)
  step = choose_step(directory, workdir, step)
  stored_config = stored_config or model_config(workdir)
  _, abstract = partitioner.abstract_params(stored_config.make_model())
  params = layout.restore_params(directory, step, abstract)
  config = stored_config.with_dtype(dtype)
  if config != stored_config:  # Stored in the training dtype, served in this one.
    params = jax.tree.map(lambda x: x.astype(config.param_dtype)
                          if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  graphdef, _ = partitioner.abstract_params(config.make_model())
  graphdef, params = quantization.quantize(graphdef, params, quantize)
  logging.info("Restored the parameters of step %d from %s%s.", step, directory,
               f", quantized to {quantize}" if quantize else "")
  return Restored(graphdef=graphdef, params=params, model_config=config, step=step)


def random_params(config, partitioner: Partitioner, *, vocab_size: int,
                  dtype: str | None = None, quantize: str | None = None,
                  seed: int = 0) -> Restored:
  """Random weights of `config.model` with a `vocab_size` vocabulary, as restored.

  `dtype` and `quantize` as in `restore_params`; `seed` initialises the parameters.
  """
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=vocab_size, pad_id=tokenizer_lib.PAD_ID
  ).with_dtype(dtype)
  graphdef, params = quantization.quantize(
      *partitioner.init_params(model_cfg.make_model(seed)), quantize)
  return Restored(graphdef=graphdef, params=params, model_config=model_cfg, step=None)


def average_checkpoints(workdir: str, partitioner: Partitioner, last_n: int
                        ) -> epath.Path:
  """Writes the element-wise mean of the last `last_n` checkpoints' parameters.

  The result is a params-only checkpoint in `workdir/averaged_last<N>/<last step>/`
  with its SHA256SUMS, restored by `restore_params(..., checkpoint_dir=...)` like any
  other; it replaces an older average whole, atomically (`layout.save_params`).
  """
  if last_n < 1:  # [-0:] would be every checkpoint.
    raise ValueError(f"--average_last={last_n}: must be >= 1 (1: the last checkpoint"
                     " as it is).")
  directory = layout.checkpoint_dir(workdir)
  steps = layout.checkpoint_steps(directory)[-last_n:]
  if len(steps) < last_n:
    raise ValueError(f"--average_last={last_n}, but {directory} has only {len(steps)}"
                     f" checkpoints ({steps}). Lower it or train longer.")
  _, abstract = partitioner.abstract_params(model_config(workdir).make_model())
  total = None
  for step in steps:
    params = layout.restore_params(directory, step, abstract)
    total = params if total is None else jax.tree.map(jnp.add, total, params)
  mean = jax.tree.map(lambda x: x / len(steps), total)
  output = layout.averaged_dir(workdir, last_n)
  layout.save_params(output, steps[-1], mean)
  logging.info("Averaged steps %s into %s/%d.", steps, output, steps[-1])
  return output
