"""The layout of a training workdir, the one contract between training and inference.

  WORKDIR/config.json                   the resolved config of the run
  WORKDIR/config.step<N>.json           the config.json a resume at step N replaced
  WORKDIR/run.json                      what the checkpoints are bound to: the
                                        tokenizer's sha256 and vocabulary size
  WORKDIR/spm.model                     the tokenizer
  WORKDIR/checkpoints/<step>/params     model parameters alone (sharded, orbax)
                            /optimizer  step and optimizer state
                            /data       every process's grain iterator state
  WORKDIR/averaged_last<N>/<step>/params  mean of the last N checkpoints' parameters
  .../<step>/SHA256SUMS                 every file's sha256 (storage/integrity.py), in
                                        each training checkpoint and average

Training writes all of it (training/checkpoints.py adds the optimizer and data items);
inference reads `params` alone, so it needs neither the optimizer nor grain. This module
imports neither training nor inference code.
"""
import json
import os

from absl import logging
from etils import epath
import ml_collections
import orbax.checkpoint as ocp

from storage import files
from storage import integrity

CONFIG_FILE = "config.json"
REPLACED_CONFIG_FILE = "config.step{step}.json"
RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
TOKENIZER_FILE = "spm.model"
# Items of a checkpoint step.
PARAMS = "params"
OPTIMIZER = "optimizer"
DATA = "data"


def checkpoint_dir(workdir) -> epath.Path:
  return files.absolute(workdir) / CHECKPOINT_DIR


def averaged_dir(workdir, count: int) -> epath.Path:
  """Where the mean of the last `count` checkpoints goes (`average.py`)."""
  return files.absolute(workdir) / f"averaged_last{count}"


def final_average_dir(workdir) -> epath.Path | None:
  """The average a finished recipe scored (results.json), or None if it has none
  (also for a config.json from before `average_last_checkpoints` existed)."""
  count = read_config(workdir).get("average_last_checkpoints")
  if count is None:
    return None
  directory = averaged_dir(workdir, count)
  return directory if directory.exists() else None


def read_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config that `train.py` wrote to WORKDIR/config.json."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a training workdir. Train one with"
        f" `python train.py --config=configs/default.py --workdir={workdir}`.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def write_config(workdir, config) -> None:
  """WORKDIR/config.json; standard JSON only (a NaN field is an error, not `NaN`)."""
  files.atomic_write(epath.Path(workdir) / CONFIG_FILE,
                     config.to_json_best_effort(indent=2, allow_nan=False))


def read_run_record(workdir) -> dict:
  """WORKDIR/run.json ({} if the run has none yet, e.g. a workdir from before it)."""
  path = epath.Path(workdir) / RUN_FILE
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}). Restore it from a backup, or"
                     " delete it to bind the run to the spm.model now in"
                     f" {workdir}.") from None


def _read_only(directory) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(files.absolute(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True))


def checkpoint_steps(directory) -> list[int]:
  """The steps saved in a checkpoint directory, oldest first ([] if there is none)."""
  directory = files.absolute(directory)
  return sorted(_read_only(directory).all_steps()) if directory.exists() else []


def verify_step(directory, step: int, item: str = "") -> bool:
  """Checks checkpoint `step`'s files (those of `item`, if given) against its
  SHA256SUMS; False if it has none, IntegrityError naming the changed files."""
  step_dir = files.absolute(directory) / str(step)
  try:
    return integrity.verify(step_dir, under=item)
  except integrity.IntegrityError as e:
    raise integrity.IntegrityError(
        f"{e}\nCheckpoint {step_dir} is corrupt. Restore another step (--step), or"
        " rewrite it: rerun average.py for an average; a training checkpoint is"
        " moved aside by the next train.py run, which resumes from the one"
        " before.") from None


def restore_params(directory, step: int, abstract_params):
  """The `params` item of `step`, laid out as `abstract_params` says.

  `abstract_params` is a tree of `jax.ShapeDtypeStruct` with shardings (from
  `Partitioner.abstract_params`): orbax reads each shard onto its device, so a
  checkpoint written on one mesh restores onto another. The files are checked
  against the step's SHA256SUMS first and the values for NaN or infinity after;
  either is an IntegrityError naming the step.
  """
  step_dir = files.absolute(directory) / str(step)
  if not verify_step(directory, step, PARAMS):
    logging.warning("%s has no %s (written before manifests, or cut short before"
                    " its manifest): its files are not verified.", step_dir,
                    integrity.MANIFEST)
  params = _read_only(directory).restore(step, args=ocp.args.Composite(
      **{PARAMS: ocp.args.StandardRestore(abstract_params)}))[PARAMS]
  bad = integrity.non_finite(params)
  if bad:
    raise integrity.IntegrityError(
        f"Checkpoint {step_dir} holds NaN or infinite parameters ({', '.join(bad[:4])}"
        f"{' ...' if len(bad) > 4 else ''}). Restore another step (--step).")
  return params


def _save_one(directory, step: int, params) -> None:
  manager = ocp.CheckpointManager(files.absolute(directory), options=(
      ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)))
  if step in manager.all_steps():
    manager.delete(step)
  manager.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params)}),
               force=True)
  manager.close()
  integrity.write_manifest(files.absolute(directory) / str(step))


def save_params(directory, step: int, params) -> None:
  """Makes `directory` a checkpoint directory holding params-only checkpoint `step`.

  Locally the new directory is built beside the old one and swapped in atomically
  (`files.replace_dir`): a kill at any point leaves the old directory or the new
  one, complete and verifiable. On a bucket the step is rewritten in place.
  """
  if files.is_remote(directory):
    _save_one(directory, step, params)
    return
  directory = os.path.abspath(os.fspath(directory))
  files.recover_dir(directory)
  staging = files.staging_dir(directory)
  _save_one(staging, step, params)
  files.replace_dir(staging, directory)
