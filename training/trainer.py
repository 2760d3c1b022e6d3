"""The training loop: `Trainer` steps a `TrainProgram`, evaluates, checkpoints, logs.

It decodes nothing itself: metrics beyond the validation loss (BLEU) come from
`Evaluator`s that the recipe passes in (recipes/train_and_score.py), so training never
imports inference. `run` is a whole training of a config in a workdir: the resume
checks (training/run_record.py), the inputs (training/inputs.py), the program
(training/state.py) and the `Trainer`.
"""
from collections.abc import Sequence
import dataclasses
import time
from typing import Protocol

from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from data import pipeline
from models import transformer
from parallel.sharding import Partitioner
from training import checkpoints
from training import inputs as inputs_lib
from training import metrics as metrics_lib
from training import run_record
from training import signals
from training import state as state_lib
from training import steps
from training.settings import TrainSettings


class NonFiniteLossError(RuntimeError):
  """Training diverged; the last checkpoint written holds finite parameters."""


class Evaluator(Protocol):
  """Metrics of the current parameters, e.g. validation BLEU (wired by the recipe).

  Called on every process at each evaluation; returns the same dict everywhere.
  """

  def __call__(self, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """How `Trainer.train` ended."""
  step: int  # The last step taken (the start step if none was left).
  interrupted: bool  # A stop request (SIGTERM, preemption) ended it, after its save.
  validation: dict[str, float]  # The last validation metrics measured; {} if none.


def _all_finite_fn(partitioner: Partitioner):
  """A jitted tree -> bool: every element finite (one cheap reduction per leaf)."""
  return partitioner.jit(
      lambda tree: jnp.all(jnp.stack([jnp.isfinite(x).all()
                                      for x in jax.tree.leaves(tree)])),
      out_shardings=partitioner.replicated)


class Trainer:
  """One run's loop: owns the compiled steps, the checkpointer, the metric writer,
  the SIGTERM handler and the finite checks.

  A context manager: entering installs the SIGTERM handler (a SIGTERM then stops
  the loop at its next step, after a save); leaving waits for the pending save,
  closes the metric writer, draws curves.png after a loop that ended normally, and
  puts the previous handler back.
  """

  def __init__(self, settings: TrainSettings, program: state_lib.TrainProgram,
               partitioner: Partitioner, workdir: epath.Path,
               evaluators: Sequence[Evaluator] = ()):
    self.settings = settings
    self.program = program
    self.workdir = workdir
    self.evaluators = tuple(evaluators)
    self.checkpointer = checkpoints.Checkpointer(
        str(workdir), max_to_keep=settings.max_checkpoints_to_keep)
    self.sigterm = signals.Sigterm()
    self._batch_sharding = partitioner.batch_sharding()
    self._all_finite = _all_finite_fn(partitioner)
    self._writer = None  # Opened by `train`: nothing is written before it.
    self._window = (time.perf_counter(), 0)  # Start of the timed steps: (time, step).

  def __enter__(self) -> "Trainer":
    self.sigterm.__enter__()
    return self

  def __exit__(self, exc_type, exc, traceback):
    try:
      try:  # A pending async save completes even when training stopped on an error.
        self.checkpointer.close()
      finally:
        if self._writer is not None:
          self._writer.close()
      if exc_type is None and self._writer is not None and jax.process_index() == 0:
        metrics_lib.plot_curves(str(self.workdir))
    finally:
      self.sigterm.__exit__(exc_type, exc, traceback)

  @property
  def stop_requested(self) -> bool:
    """A SIGTERM came (even after the loop, while the last save completed)."""
    return self.sigterm.received

  def evaluate(self, params: nnx.State,
               batches: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Validation loss, accuracy and perplexity over every batch of every process,
    then the evaluators' metrics."""
    # Processes can hold different numbers of batches: all run the largest number,
    # the extra batches being all padding (weight 0).
    batches = list(batches)
    count = int(np.max(multihost_utils.process_allgather(np.array(len(batches)))))
    padding = jax.tree.map(np.zeros_like, batches[0])
    sums = None
    for batch in batches + [padding] * (count - len(batches)):
      out = self.program.eval_step(params,
                                   pipeline.make_global(batch, self._batch_sharding))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    result = steps.summarize_eval(jax.device_get(sums))
    for evaluator in self.evaluators:
      result.update(evaluator(self.program.graphdef, params))
    return result

  def train(self, state: steps.TrainState, inputs: inputs_lib.Inputs,
            start_step: int) -> TrainResult:
    """Steps from `start_step` to `num_train_steps` (or a stop request).

    Nothing non-finite is saved: the parameters are checked before every save, the
    loss and gradient norm at every logged step, the validation metrics when
    measured. A failed asynchronous save stops the loop at the next step
    (`Checkpointer.check`).
    """
    s = self.settings
    if self._writer is None:
      self._writer = metrics_lib.MetricWriter(str(self.workdir))
    progress = tqdm.tqdm(total=s.num_train_steps, initial=start_step,
                         disable=jax.process_index() != 0, dynamic_ncols=True)
    self._window = (time.perf_counter(), start_step)
    last_eval, step, stopping = {}, start_step, False
    for step in range(start_step + 1, s.num_train_steps + 1):
      state, metrics = self._step(step, state, inputs.train_iter)
      stopping = self.sigterm.received or self.checkpointer.reached_preemption(step)
      last = step == s.num_train_steps
      save = last or stopping or step % s.checkpoint_every_steps == 0
      if save or step % s.log_every_steps == 0:
        self._log_train(step, jax.device_get(metrics), progress)
      bleu_now = None
      if last or step % s.eval_every_steps == 0:
        measured = self._validate(step, state.params, inputs.eval_batches)
        if measured is None:  # Abandoned on SIGTERM: save this step and stop.
          stopping = save = True
        else:
          last_eval, bleu_now = measured, measured.get("bleu")
      if save:  # BLEU measured at this step ranks the checkpoint.
        self._save(step, state, inputs.train_iter, bleu_now)
      progress.update(1)
      if stopping:
        logging.warning("Stopping at step %d after a stop request.", step)
        break
    progress.close()
    return TrainResult(step=step, interrupted=stopping, validation=last_eval)

  def _step(self, step: int, state: steps.TrainState, train_iter):
    """One train step, inside the profiler trace's window if one is configured."""
    profile = self.settings.profile_steps
    if profile and step == profile[0]:
      jax.profiler.start_trace(str(self.workdir / "profile"))
    self.checkpointer.check()
    batch = pipeline.make_global(next(train_iter), self._batch_sharding)
    state, metrics = self.program.train_step(state, batch)
    if profile and step == profile[1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
    return state, metrics

  def _log_train(self, step: int, metrics: dict, progress: tqdm.tqdm) -> None:
    """Checks and writes a step's train metrics, with the speed since the last log."""
    if not all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
      raise self._diverged(step, f"loss or gradient (loss={metrics['loss']},"
                           f" grad_norm={metrics['grad_norm']})")
    window_start, window_step = self._window
    seconds = (time.perf_counter() - window_start) / (step - window_step)
    metrics["step_time_ms"] = 1000 * seconds
    metrics["tokens_per_sec"] = metrics["tokens"] / seconds  # Target tokens.
    self._writer.write(step, "train", metrics)
    progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                         lr=f"{metrics['learning_rate']:.2e}",
                         tok_s=f"{metrics['tokens_per_sec']:.0f}")
    self._window = (time.perf_counter(), step)

  def _validate(self, step: int, params: nnx.State, batches
                ) -> dict[str, float] | None:
    """`evaluate`, written and checked; None if a SIGTERM abandoned it."""
    try:
      with self.sigterm.interruptible():
        measured = self.evaluate(params, batches)
    except signals.EvaluationInterrupted:
      logging.warning("Step %d: validation abandoned on SIGTERM.", step)
      return None
    self._writer.write(step, "validation", measured)
    logging.info("Step %d validation: %s", step, measured)
    if not all(np.isfinite(v) for v in measured.values()):
      raise self._diverged(step, f"validation metrics ({measured})")
    return measured

  def _save(self, step: int, state: steps.TrainState, train_iter,
            bleu: float | None) -> None:
    if not bool(self._all_finite(state.params)):
      raise self._diverged(step, "parameters (the loss was still finite)")
    self.checkpointer.save(step, state, train_iter, bleu=bleu)

  def _diverged(self, step: int, what: str) -> NonFiniteLossError:
    self.checkpointer.wait()  # A save still in flight completes: the last good one.
    good = self.checkpointer.last_good
    where = ("no checkpoint restored intact or was saved by this run, so a rerun"
             " starts from scratch" if good is None else
             f"the last good checkpoint (intact against its SHA256SUMS, finite) is"
             f" step {good} in {self.checkpointer.directory}, where a rerun resumes")
    return NonFiniteLossError(
        f"Non-finite {what} at step {step}. Stopped without saving; {where}. Lower"
        " learning_rate, raise warmup_steps or check the data, then rerun.")


def run(config, workdir: str, partitioner: Partitioner, sources, tokenizer,
        evaluators: Sequence[Evaluator] = ()) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  `sources` ('train' and 'validation' data sources) and `tokenizer` come from
  `recipes.prepare`; `evaluators` add metrics (e.g. BLEU) to each validation pass.
  Returns the last step reached (`step`), whether a stop request (SIGTERM or
  preemption, even at the last step) ended the run after its save (`interrupted`:
  the job should exit, and a rerun continues), and the last validation metrics.
  """
  workdir = epath.Path(workdir)
  run_record.check_tokenizer(workdir, tokenizer)
  program = state_lib.build_program(config, tokenizer.vocab_size, partitioner)
  # From here on a SIGTERM (while reading the data, restoring, compiling) stops the
  # run at its first step.
  with Trainer(TrainSettings.from_config(config), program, partitioner, workdir,
               evaluators) as trainer:
    logging.info("Mesh %s over %d devices, %d processes.",
                 dict(partitioner.mesh.shape), jax.device_count(), jax.process_count())
    logging.info("Model: %s parameters.",
                 f"{transformer.count_params(program.abstract.params):,}")
    inputs = inputs_lib.make_inputs(config, sources, tokenizer, partitioner)
    # Before anything is written: a checkpoint that does not fit stops the run here.
    restored, start_step = run_record.restore_or_stop(
        config, workdir, trainer.checkpointer, program.abstract, inputs.train_iter)
    run_record.write_run_info(config, workdir, tokenizer)
    state = program.init() if restored is None else restored
    result = trainer.train(state, inputs, start_step)
  return {"step": result.step,
          "interrupted": result.interrupted or trainer.stop_requested,
          **result.validation}
