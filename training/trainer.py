"""The training loop: sharded state, jitted steps, evaluation, checkpoints, logs.

It decodes nothing itself: metrics beyond the validation loss (BLEU) come from
`Evaluator`s that train.py passes in, so training never imports inference.
"""
from collections.abc import Iterator, Sequence
import dataclasses
import functools
import json
import subprocess
import sys
import time
from typing import Protocol

from absl import logging
from etils import epath
import flax
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from data import pipeline
from data import tokenizer as tokenizer_lib
from models import transformer
from parallel import sharding
from parallel.sharding import Partitioner
from storage import layout
from training import checkpoints
from training import metrics as metrics_lib
from training import optimizer as optimizer_lib
from training import signals
from training import steps
from training import validate


class NonFiniteLossError(RuntimeError):
  """Training diverged; the last checkpoint written holds finite parameters."""


class TokenizerMismatchError(RuntimeError):
  """The tokenizer given to training is not the one the run recorded (run.json)."""


class Evaluator(Protocol):
  """Metrics of the current parameters, e.g. validation BLEU (wired by train.py).

  Called on every process at each evaluation; returns the same dict everywhere.
  """

  def __call__(self, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True)
class InitialState:
  """A fresh train state, created in its shards, with what compiling the steps needs."""
  graphdef: nnx.GraphDef  # The Transformer's structure; merge with params.
  state: steps.TrainState
  # ShapeDtypeStructs with shardings: the restore target, and the steps' shardings.
  abstract: steps.TrainState

  @property
  def shardings(self) -> steps.TrainState:
    return sharding.shardings_of(self.abstract)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """This process's training batches and validation batches."""
  train_iter: Iterator[dict[str, np.ndarray]]  # Endless; checkpointable (grain).
  eval_batches: list[dict[str, np.ndarray]]  # One pass over its validation shard.


def write_run_info(config, workdir: epath.Path, tokenizer) -> None:
  """config.json (resolved config), run_info.json (git commit, library versions) and
  the tokenizer's record in run.json; called once the checkpoint fits the config."""
  if jax.process_index() != 0:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  layout.write_config(workdir, config)
  layout.record_tokenizer(workdir, tokenizer.proto)
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True,
                            cwd=epath.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  info = {"git_commit": commit, "argv": sys.argv, "python": sys.version.split()[0],
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "devices": jax.device_count(),
          "platform": jax.devices()[0].platform, "processes": jax.process_count()}
  layout.atomic_write(workdir / "run_info.json", json.dumps(info, indent=2))


def check_tokenizer(workdir: epath.Path, tokenizer) -> None:
  """The tokenizer must be the one the run's checkpoints were trained with."""
  expected = layout.read_run_record(workdir).get("tokenizer")
  found = layout.tokenizer_record(tokenizer.proto)
  if expected and expected != found:
    raise TokenizerMismatchError(
        f"The tokenizer given to training (sha256 {found['sha256']},"
        f" {found['vocab_size']} pieces) is not the one {workdir} was trained with"
        f" (sha256 {expected['sha256']}, {expected['vocab_size']} pieces, recorded"
        f" in {workdir / layout.RUN_FILE}). Use that run's spm.model, or a new"
        " --workdir.")


def _saved_config(workdir: epath.Path) -> tuple[epath.Path, str | None]:
  """The run's config.json path and its text (None before the first run)."""
  path = workdir / layout.CONFIG_FILE
  return path, path.read_text() if path.exists() else None


def restore_or_stop(config, workdir: epath.Path, checkpointer, initial: InitialState,
                    train_iter) -> tuple[steps.TrainState | None, int]:
  """`Checkpointer.restore_latest`, then `check_resumed_config`; a mismatch also
  names the config fields changed."""
  try:
    restored, start_step = checkpointer.restore_latest(initial.abstract, train_iter)
  except checkpoints.CheckpointMismatchError as e:
    saved_path, saved = _saved_config(workdir)
    diff = validate.config_diff(json.loads(saved), config) if saved else []
    raise checkpoints.CheckpointMismatchError(
        f"{e}\nConfig fields that differ from {saved_path} (which is unchanged):\n  "
        + ("\n  ".join(diff) or "none (the code changed the state?)")) from None
  if restored is not None:
    check_resumed_config(config, workdir, start_step)
  return restored, start_step


def check_resumed_config(config, workdir: epath.Path, start_step: int) -> list[str]:
  """On resume, the config fields that differ from the run's config.json.

  A change to the learning rate of the steps still to train stops the run before
  anything is written. Other changes (more steps of rsqrt, evaluation settings) go
  on: they are logged, and the config.json they replace is kept as
  config.step<start_step>.json.
  """
  saved_path, saved_text = _saved_config(workdir)
  if saved_text is None:
    return []
  saved = json.loads(saved_text)
  changes = validate.config_diff(saved, config)
  if not changes:
    return []
  listed = "\n  ".join(changes)
  moved = validate.schedule_change(saved, config, start_step)
  if moved:
    raise validate.ScheduleChangeError(
        f"Resuming {workdir} at step {start_step} with this config would change the"
        f" learning rate of the steps still to train ({moved}). Config fields that"
        f" differ from {saved_path} (which is unchanged):\n  {listed}\nRestore them"
        " to continue this run, or train in a new --workdir: a linear or cosine"
        " schedule ends at its num_train_steps and cannot be extended.")
  kept = workdir / layout.REPLACED_CONFIG_FILE.format(step=start_step)
  if jax.process_index() == 0:
    layout.atomic_write(kept, saved_text)
  logging.warning("Resuming at step %d with a changed config (the old one is kept as"
                  " %s):\n  %s", start_step, kept, listed)
  return changes


def create_train_state(model_cfg: transformer.TransformerConfig,
                       tx: optax.GradientTransformation, partitioner: Partitioner,
                       seed: int) -> InitialState:
  """Initialises the train state with every array created directly in its own shard.

  Shapes and shardings start from `Partitioner.abstract_params`; an optimizer moment
  shaped like its parameter (Adam's) takes the parameter's sharding, a factored one
  (Adafactor's row and column statistics) is replicated.
  """
  make_model = model_cfg.make_model(seed)
  graphdef, abstract_params = partitioner.abstract_params(make_model)
  def like_param(x, p):
    sharding = p.sharding if x.shape == p.shape else partitioner.replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  abstract_opt = optax.tree_map_params(
      tx, like_param, jax.eval_shape(tx.init, abstract_params), abstract_params,
      transform_non_params=lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=partitioner.replicated))
  abstract = steps.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated),
      params=abstract_params, opt_state=abstract_opt)

  def init():
    params = nnx.split(make_model(), nnx.Param)[1]
    return steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                            opt_state=tx.init(params))
  state = partitioner.jit(init, out_shardings=sharding.shardings_of(abstract))()
  return InitialState(graphdef=graphdef, state=state, abstract=abstract)


def compile_steps(config, initial: InitialState, tx: optax.GradientTransformation,
                  partitioner: Partitioner):
  """The jitted train step (state donated) and eval step, with explicit shardings."""
  batch_sharding = partitioner.batch_sharding()
  train_step = partitioner.jit(
      functools.partial(
          steps.train_step, graphdef=initial.graphdef, tx=tx,
          schedule=optimizer_lib.schedule_from_config(config),
          seed=config.seed, dropout_rng_impl=config.dropout_rng_impl,
          label_smoothing=config.label_smoothing),
      in_shardings=(initial.shardings, batch_sharding),
      out_shardings=(initial.shardings, None), donate_argnums=0)
  eval_step = partitioner.jit(
      functools.partial(steps.eval_step, graphdef=initial.graphdef),
      in_shardings=(initial.shardings.params, batch_sharding))
  return train_step, eval_step


def evaluate(eval_fn, params, batches, batch_sharding) -> dict[str, float]:
  """Validation loss, accuracy and perplexity over every batch of every process."""
  # Processes can hold different numbers of batches: all run the largest number,
  # the extra batches being all padding (weight 0).
  count = int(np.max(multihost_utils.process_allgather(np.array(len(batches)))))
  padding = jax.tree.map(np.zeros_like, batches[0])
  sums = None
  for batch in batches + [padding] * (count - len(batches)):
    out = eval_fn(params, pipeline.make_global(batch, batch_sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return steps.summarize_eval(jax.device_get(sums))


def _diverged(step: int, what: str, checkpointer) -> NonFiniteLossError:
  checkpointer.wait()  # A save still in flight completes: it is the last good one.
  return NonFiniteLossError(
      f"Non-finite {what} at step {step}. Stopped without saving; the last good"
      f" checkpoint is step {checkpointer.last_good} in {checkpointer.directory}."
      " Lower learning_rate, raise warmup_steps or check the data, then rerun to"
      " resume.")


def _check_finite(step: int, metrics: dict, checkpointer) -> None:
  if not all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
    raise _diverged(step, f"loss or gradient (loss={metrics['loss']}, grad_norm="
                    f"{metrics['grad_norm']})", checkpointer)


def all_finite_fn(partitioner: Partitioner):
  """A jitted tree -> bool: every element finite (one cheap reduction per leaf)."""
  return partitioner.jit(
      lambda tree: jnp.all(jnp.stack([jnp.isfinite(x).all()
                                      for x in jax.tree.leaves(tree)])),
      out_shardings=partitioner.replicated)


def make_inputs(config, sources, tokenizer, partitioner: Partitioner) -> Inputs:
  """This process's packed training iterator and validation batches."""
  data_cfg = config.data
  rows = pipeline.local_batch_size(
      config.batch_tokens, data_cfg.max_length, process_count=jax.process_count(),
      num_batch_shards=(partitioner.batch_sharding().num_devices
                        // partitioner.mesh.shape["tensor"]))
  langs = {"source_lang": data_cfg.source_lang, "target_lang": data_cfg.target_lang}
  train_iter = iter(pipeline.train_dataset(
      sources["train"], tokenizer, batch_size=rows, max_length=data_cfg.max_length,
      seed=config.seed, worker_count=data_cfg.worker_count, **langs))
  eval_batches = list(pipeline.eval_dataset(
      sources["validation"], tokenizer, batch_size=rows,
      max_length=data_cfg.eval_max_length, **langs))
  return Inputs(train_iter=train_iter, eval_batches=eval_batches)


def run(config, workdir: str, partitioner: Partitioner, sources, tokenizer,
        evaluators: Sequence[Evaluator] = ()) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  `sources` ('train' and 'validation' data sources) and `tokenizer` come from
  `data.prepare`; `evaluators` add metrics (e.g. BLEU) to each validation loss pass.
  Returns the last step reached (`step`), whether a stop request (SIGTERM or
  preemption, even at the last step) ended the run after its save (`interrupted`:
  the job should exit, and a rerun continues), and the last validation metrics.
  """
  # From the start: a SIGTERM while restoring or compiling stops at the first step.
  with signals.Sigterm() as sigterm:
    result = _run(config, epath.Path(workdir), partitioner, sources, tokenizer,
                  evaluators, sigterm)
    # One after the loop (while the last save completes) asked to stop all the same.
    result["interrupted"] = result["interrupted"] or sigterm.received
    return result


def _run(config, workdir: epath.Path, partitioner: Partitioner, sources, tokenizer,
         evaluators: Sequence[Evaluator], sigterm: signals.Sigterm) -> dict[str, float]:
  """`run` with the SIGTERM handler installed."""
  check_tokenizer(workdir, tokenizer)
  logging.info("Mesh %s over %d devices, %d processes.", dict(partitioner.mesh.shape),
               jax.device_count(), jax.process_count())
  inputs = make_inputs(config, sources, tokenizer, partitioner)
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer_lib.PAD_ID)
  tx = optimizer_lib.create_optimizer(config)
  initial = create_train_state(model_cfg, tx, partitioner, config.seed)
  logging.info("Model: %s parameters.",
               f"{transformer.count_params(initial.state.params):,}")
  checkpointer = checkpoints.Checkpointer(
      str(workdir), max_to_keep=config.max_checkpoints_to_keep)
  # Before anything is written: a checkpoint that does not fit stops the run here.
  restored, start_step = restore_or_stop(config, workdir, checkpointer, initial,
                                         inputs.train_iter)
  write_run_info(config, workdir, tokenizer)
  state = initial.state if restored is None else restored
  train_step, eval_step = compile_steps(config, initial, tx, partitioner)
  batch_sharding = partitioner.batch_sharding()

  def evaluate_now(params) -> dict[str, float]:
    result = evaluate(eval_step, params, inputs.eval_batches, batch_sharding)
    for evaluator in evaluators:
      result.update(evaluator(initial.graphdef, params))
    return result

  writer = metrics_lib.MetricWriter(str(workdir))
  try:
    last_eval = _train_loop(config, workdir, state, start_step, inputs.train_iter,
                            batch_sharding, train_step, evaluate_now, checkpointer,
                            writer, all_finite_fn(partitioner), sigterm)
  finally:  # A pending async save completes even when training stops on an error.
    checkpointer.close()
    writer.close()
  if jax.process_index() == 0:
    metrics_lib.plot_curves(str(workdir))
  return last_eval


def _train_loop(config, workdir, state, start_step, train_iter, batch_sharding,
                train_step, evaluate_now, checkpointer, writer, all_finite,
                sigterm: signals.Sigterm) -> dict[str, float]:
  """Steps from `start_step` to the end (or a stop request); the last evaluation,
  with the step reached and whether a stop request ended the loop.

  Nothing non-finite is saved: the parameters are checked before every save, the
  loss and gradient norm at every logged step, the validation metrics when measured.
  A failed asynchronous save stops the loop at the next step (`Checkpointer.check`).
  """
  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step,
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_eval, window_start, window_step = {}, time.perf_counter(), start_step
  step, stopping = start_step, False
  profile_steps = (config.profile_start_step,
                   config.profile_start_step + config.profile_num_steps - 1)
  for step in range(start_step + 1, config.num_train_steps + 1):
    if step == profile_steps[0] > 0:
      jax.profiler.start_trace(str(workdir / "profile"))
    checkpointer.check()
    batch = pipeline.make_global(next(train_iter), batch_sharding)
    state, metrics = train_step(state, batch)
    if step == profile_steps[1] and profile_steps[0] > 0:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()

    stopping = sigterm.received or checkpointer.reached_preemption(step)
    last = step == config.num_train_steps
    save = last or stopping or step % config.checkpoint_every_steps == 0
    if save or step % config.log_every_steps == 0:
      metrics = jax.device_get(metrics)
      _check_finite(step, metrics, checkpointer)
      seconds = (time.perf_counter() - window_start) / (step - window_step)
      metrics["step_time_ms"] = 1000 * seconds
      metrics["tokens_per_sec"] = metrics["tokens"] / seconds  # Target tokens.
      writer.write(step, "train", metrics)
      progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                           lr=f"{metrics['learning_rate']:.2e}",
                           tok_s=f"{metrics['tokens_per_sec']:.0f}")
      window_start, window_step = time.perf_counter(), step
    bleu_now = None
    if last or step % config.eval_every_steps == 0:
      try:
        with sigterm.interruptible():
          measured = evaluate_now(state.params)
      except signals.EvaluationInterrupted:
        logging.warning("Step %d: validation abandoned on SIGTERM.", step)
        stopping = save = True
      else:
        last_eval = measured
        bleu_now = last_eval.get("bleu")
        writer.write(step, "validation", last_eval)
        logging.info("Step %d validation: %s", step, last_eval)
        if not all(np.isfinite(v) for v in last_eval.values()):
          raise _diverged(step, f"validation metrics ({last_eval})", checkpointer)
    if save and not bool(all_finite(state.params)):
      raise _diverged(step, "parameters (the loss was still finite)", checkpointer)
    if save:  # BLEU measured at this step ranks the checkpoint.
      checkpointer.save(step, state, train_iter, bleu=bleu_now)
    progress.update(1)
    if stopping:
      logging.warning("Stopping at step %d after a stop request.", step)
      break
  progress.close()
  return {"step": step, "interrupted": stopping, **last_eval}
