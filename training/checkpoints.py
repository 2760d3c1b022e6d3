"""Checkpoints with orbax: train state and data-iterator state saved together.

The layout (storage/layout.py) is `workdir/checkpoints/<step>/{params,optimizer,data}`:
`params` holds the model parameters alone, so inference reads them without touching
the optimizer state; `optimizer` holds the step and optimizer state; both are sharded
(each process writes its shards). `data` is every process's grain iterator state, so a
resumed run reads exactly the batches an uninterrupted run would have.
Saves are asynchronous; orbax writes into a temporary folder and renames it when
complete, so a crash or a full disk mid-save leaves no half checkpoint behind, and the
one before it is kept (old steps are deleted only once a new one is complete). The
temporary folder of a save cut short (`<step>.orbax-checkpoint-tmp`) is deleted at
the next start. A save that fails in the background raises its own error (e.g.
`OSError: [Errno 28] No space left on device`) at the next `check()`, i.e. within a
training step, not only at the next save.

Once a save is complete, process 0 writes `<step>/SHA256SUMS` (storage/integrity.py),
the sha256 of every file, after syncing them to disk. A restore checks the files
against it and the restored parameters for NaN or infinity.

Resume is strict: a checkpoint whose tree or shapes differ from the state the config
builds (model size, optimizer, gradient accumulation, vocabulary) or that was saved by
another number of processes stops the run (`CheckpointMismatchError`). Only a corrupt
checkpoint (unreadable, files that differ from its SHA256SUMS, non-finite parameters,
or missing its data-iterator state) is moved aside to `<step>.corrupt-<time>` and the
one before it restored. All processes restore the same step.
"""
import contextlib
import time

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from storage import integrity
from storage import layout
from training import steps


class CheckpointMismatchError(RuntimeError):
  """A checkpoint does not fit the state the config builds; resuming would be wrong."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint is incomplete or damaged (not a config mismatch): moved aside."""


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes(tree) -> dict[str, tuple]:
  """{'a.b.0.c': shape} of a tree's leaves, named as orbax names saved arrays."""
  return {".".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tree_differences(item: str, saved: dict, wanted: dict, limit: int = 4
                      ) -> list[str]:
  """Arrays only saved, only wanted, or of another shape: up to `limit` of each."""
  kinds = [
      [f"{item}.{k}: saved, not in the config's state" for k in saved
       if k not in wanted],
      [f"{item}.{k}: in the config's state, not saved" for k in wanted
       if k not in saved],
      [f"{item}.{k}: shape {tuple(saved[k])} saved, {wanted[k]} now" for k in wanted
       if k in saved and tuple(saved[k]) != wanted[k]]]
  return [d for diffs in kinds for d in diffs[:limit]
          + ([f"... and {len(diffs) - limit} more like it"]
             if len(diffs) > limit else [])]


def mismatches(step_dir: epath.Path, abstract_state: steps.TrainState) -> list[str]:
  """How checkpoint `step_dir` differs from `abstract_state`; [] if it fits.

  Reads only metadata (tree, shapes; which processes saved the data state). Raises
  if the metadata is unreadable, i.e. the checkpoint is corrupt.
  """
  handler = ocp.handlers.StandardCheckpointHandler()
  wanted = {layout.PARAMS: abstract_state.params,
            layout.OPTIMIZER: {"step": abstract_state.step,
                               "opt_state": abstract_state.opt_state}}
  diffs = []
  for item, target in wanted.items():
    saved = {k: v.shape for k, v in ocp.tree.to_flat_dict(
        handler.metadata(step_dir / item).tree, sep=".").items()}
    diffs += _tree_differences(item, saved, _shapes(target))
  data_dir = step_dir / layout.DATA
  names = ([p.name for p in data_dir.iterdir() if p.name.startswith("process_")]
           if data_dir.is_dir() else [])
  if not names:
    raise CorruptCheckpointError(
        f"{data_dir} holds no data-iterator state (process_*-of-*.json): the"
        " checkpoint is incomplete, so a resume could not read the batches an"
        " uninterrupted run would have.")
  counts = {n.rsplit("-of-", 1)[-1].removesuffix(".json") for n in names}
  if counts != {str(jax.process_count())}:
    diffs.append(f"{layout.DATA}: saved by {'/'.join(sorted(counts)) or 'no'}"
                 f" processes, {jax.process_count()} now")
  return diffs


def _agree(flag: int) -> int:
  """The largest `flag` over all processes (the same answer everywhere)."""
  return int(np.max(multihost_utils.process_allgather(np.int32(flag))))


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints plus the best by validation BLEU."""

  def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = layout.checkpoint_dir(workdir)
    policies = ocp.checkpoint_managers
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=max_to_keep),
                policies.BestN(get_metric_fn=lambda m: m["bleu"], n=1,
                               keep_checkpoints_without_metrics=False)])))
    # The newest step restored intact (its SHA256SUMS matched) with finite
    # parameters, or saved complete by this run (finite, SHA256SUMS written).
    self.last_good = None
    self._in_flight = None  # The step whose asynchronous save may still run.

  def save(self, step: int, state: steps.TrainState, data_iterator,
           bleu: float | None = None) -> None:
    """Saves asynchronously; `bleu` (validation, if measured now) ranks checkpoints.

    Waits for the previous save first, raising its error if it failed.
    """
    self.wait()
    self._in_flight = step
    with self._failure_note():
      self.manager.save(step, metrics=None if bleu is None else {"bleu": bleu},
                        args=ocp.args.Composite(**{
                            layout.PARAMS: ocp.args.StandardSave(state.params),
                            layout.OPTIMIZER: ocp.args.StandardSave(
                                {"step": state.step, "opt_state": state.opt_state}),
                            layout.DATA: grain.checkpoint.CheckpointSave(
                                data_iterator)}),
                        force=True)

  def check(self) -> None:
    """Raises the error of a failed asynchronous save, once it is done; cheap.

    Called every training step, so a save that failed (e.g. on a full disk) stops
    the run at once instead of one checkpoint interval later.
    """
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the pending save is complete; raises its error if it failed."""
    with self._failure_note():
      self.manager.wait_until_finished()
      if self._in_flight is not None and jax.process_index() == 0:
        integrity.write_manifest(self.directory / str(self._in_flight))
    if self._in_flight is not None:
      self.last_good, self._in_flight = self._in_flight, None

  @contextlib.contextmanager
  def _failure_note(self):
    """Adds to a failed save's own error which step failed and what is intact."""
    try:
      yield
    except Exception as e:
      if self._in_flight is not None:
        before = ("no checkpoint was saved before it" if self.last_good is None else
                  f"the checkpoints before it are intact, the newest being step"
                  f" {self.last_good}")
        e.add_note(
            f"Saving checkpoint {self._in_flight} in {self.directory} failed;"
            f" {before}. Fix the cause (e.g. free disk space) and rerun to resume;"
            " the failed save's temporary folder is deleted then.")
        self._in_flight = None
      raise

  def restore_latest(self, abstract_state: steps.TrainState, data_iterator
                     ) -> tuple[steps.TrainState | None, int]:
    """The newest readable checkpoint as (state, step), or (None, 0) if none exists.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with the shardings wanted
    now, so a checkpoint written on another mesh shape is resharded on read.
    `data_iterator` is moved to the saved position in place. Raises
    CheckpointMismatchError if the newest readable checkpoint does not fit
    `abstract_state`; corrupt ones are moved aside (`_move_aside`).
    """
    for step in self._agreed_steps():
      step_dir = self.directory / str(step)
      error, diffs = None, []
      try:
        self._verify(step_dir)
        diffs = mismatches(step_dir, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      status = _agree(2 if diffs else 1 if error else 0)
      if status == 2:
        raise CheckpointMismatchError(
            f"Checkpoint {step_dir} does not fit the state this config builds"
            f" ({'; '.join(diffs) or 'see process 0'}). Nothing was changed. Resume"
            " with the config it was trained with, or train this config in a new"
            " --workdir.")
      if status == 0:
        try:
          restored = self.manager.restore(step, args=self._restore_args(
              abstract_state, data_iterator))
          if bad := integrity.non_finite(restored[layout.PARAMS]):
            raise CorruptCheckpointError(
                f"parameters {', '.join(bad[:4])} hold NaN or infinity")
        except Exception as e:  # pylint: disable=broad-except
          error = e
        status = _agree(1 if error else 0)
      if status == 0:
        logging.info("Restored step %d from %s.", step, self.directory)
        self.last_good = step
        return steps.TrainState(params=restored[layout.PARAMS],
                                **restored[layout.OPTIMIZER]), step
      self._move_aside(step, error)
    return None, 0

  @staticmethod
  def _verify(step_dir: epath.Path) -> None:
    """Process 0 checks the files against SHA256SUMS (a missing one: a warning)."""
    if jax.process_index() == 0 and not integrity.verify(step_dir):
      logging.warning("%s has no %s (saved before manifests, or the run was killed"
                      " just before writing it): its files are not verified.",
                      step_dir, integrity.MANIFEST)

  @staticmethod
  def _restore_args(abstract_state: steps.TrainState, data_iterator):
    return ocp.args.Composite(**{
        layout.PARAMS: ocp.args.StandardRestore(abstract_state.params),
        layout.OPTIMIZER: ocp.args.StandardRestore(
            {"step": abstract_state.step, "opt_state": abstract_state.opt_state}),
        layout.DATA: grain.checkpoint.CheckpointRestore(data_iterator)})

  def _agreed_steps(self) -> list[int]:
    """Process 0's saved steps, newest first, on every process."""
    found = sorted(self.manager.all_steps(), reverse=True)
    count = int(multihost_utils.broadcast_one_to_all(np.int32(len(found))))
    padded = np.full(count, -1, np.int32)
    padded[:min(count, len(found))] = found[:count]
    return [int(s) for s in multihost_utils.broadcast_one_to_all(padded)]

  def _move_aside(self, step: int, error: Exception | None) -> None:
    """Renames corrupt checkpoint `step` to `<step>.corrupt-<time>` (process 0)."""
    step_dir = self.directory / str(step)
    aside = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.error(
        "CHECKPOINT %s IS CORRUPT OR INCOMPLETE (%s: %s; on this or another process)."
        " Moved it to %s and trying the one before it; delete it once you have"
        " looked.", step_dir, type(error).__name__, error, aside)
    if jax.process_index() == 0 and step_dir.exists():
      step_dir.rename(aside)
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True on every host once the cluster has been told to stop (multi-host runs)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def close(self):
    """Waits for the pending save (raising its error if it failed), then closes."""
    try:
      self.wait()
    finally:
      self.manager.close()
