"""Checkpoints with orbax: train state and data-iterator state saved together.

The layout (storage/layout.py) is `workdir/checkpoints/<step>/{params,optimizer,data}`:
`params` holds the model parameters alone, so inference reads them without touching
the optimizer state; `optimizer` holds the step and optimizer state; both are sharded
(each process writes its shards). `data` is every process's grain iterator state, so a
resumed run reads exactly the batches an uninterrupted run would have.
Saves are asynchronous; orbax writes into a temporary folder and renames it when
complete, so a crash mid-save leaves no half checkpoint behind, and a checkpoint
that is there but unreadable is skipped in favour of the one before it.
"""
from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from storage import layout
from training import steps


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints plus the best by validation BLEU."""

  def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = layout.checkpoint_dir(workdir)
    policies = ocp.checkpoint_managers
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=max_to_keep),
                policies.BestN(get_metric_fn=lambda m: m["bleu"], n=1,
                               keep_checkpoints_without_metrics=False)])))

  def save(self, step: int, state: steps.TrainState, data_iterator,
           bleu: float | None = None) -> None:
    """Saves asynchronously; `bleu` (validation, if measured now) ranks checkpoints."""
    self.manager.save(step, metrics=None if bleu is None else {"bleu": bleu},
                      args=ocp.args.Composite(**{
                          layout.PARAMS: ocp.args.StandardSave(state.params),
                          layout.OPTIMIZER: ocp.args.StandardSave(
                              {"step": state.step, "opt_state": state.opt_state}),
                          layout.DATA: grain.checkpoint.CheckpointSave(data_iterator)}),
                      force=True)

  def restore_latest(self, abstract_state: steps.TrainState, data_iterator
                     ) -> tuple[steps.TrainState | None, int]:
    """The newest readable checkpoint as (state, step), or (None, 0) if none exists.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with the shardings wanted
    now, so a checkpoint written on another mesh shape is resharded on read.
    `data_iterator` is moved to the saved position in place.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            layout.PARAMS: ocp.args.StandardRestore(abstract_state.params),
            layout.OPTIMIZER: ocp.args.StandardRestore(
                {"step": abstract_state.step, "opt_state": abstract_state.opt_state}),
            layout.DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s/%d is unreadable (%s: %s); trying the one"
                        " before it.", self.directory, step, type(e).__name__, e)
        continue
      logging.info("Restored step %d from %s.", step, self.directory)
      return steps.TrainState(params=restored[layout.PARAMS],
                              **restored[layout.OPTIMIZER]), step
    return None, 0

  def reached_preemption(self, step: int) -> bool:
    """True on every host once the cluster has been told to stop (multi-host runs)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
