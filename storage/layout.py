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

Training writes all of it (training/checkpoints.py adds the optimizer and data items);
inference reads `params` alone, so it needs neither the optimizer nor grain. This module
imports neither training nor inference code.
"""
import hashlib
import json
import os

from etils import epath
import ml_collections
import orbax.checkpoint as ocp

from data import tokenizer as tokenizer_lib

CONFIG_FILE = "config.json"
REPLACED_CONFIG_FILE = "config.step{step}.json"
RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
TOKENIZER_FILE = tokenizer_lib.MODEL_FILENAME
# Items of a checkpoint step.
PARAMS = "params"
OPTIMIZER = "optimizer"
DATA = "data"


def is_remote(path) -> bool:
  """A URL such as gs://bucket/dir (read and written through etils.epath and fsspec:
  `pip install .[gcs]`), not a local path."""
  return "://" in os.fspath(path)


def absolute(path) -> epath.Path:
  """A local path made absolute (orbax rejects relative ones); gs:// paths as they are."""
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def checkpoint_dir(workdir) -> epath.Path:
  return absolute(workdir) / CHECKPOINT_DIR


def averaged_dir(workdir, count: int) -> epath.Path:
  """Where the mean of the last `count` checkpoints goes (`infer.py --mode=average`)."""
  return absolute(workdir) / f"averaged_last{count}"


def final_average_dir(workdir) -> epath.Path | None:
  """The average a finished recipe scored (results.json), or None if it has none."""
  directory = averaged_dir(workdir, read_config(workdir).average_last_checkpoints)
  return directory if directory.exists() else None


def read_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config that `train.py` wrote to WORKDIR/config.json."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a training workdir. Train one with"
        f" `python train.py --config=configs/default.py --workdir={workdir}`.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def atomic_write(path, data: bytes | str) -> None:
  """Writes `path` whole or not at all: a temporary file, then a rename.

  A reader (or a crash) never sees half a file. gs:// objects are written whole by
  the store itself.
  """
  path = epath.Path(path)
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def write_config(workdir, config) -> None:
  atomic_write(epath.Path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2))


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


def tokenizer_record(model_proto: bytes) -> dict:
  """What binds checkpoints to a tokenizer: its sha256 and vocabulary size."""
  return {"sha256": hashlib.sha256(model_proto).hexdigest(),
          "vocab_size": tokenizer_lib.Tokenizer(model_proto).vocab_size}


def record_tokenizer(workdir, model_proto: bytes) -> None:
  """Binds the run to this tokenizer in WORKDIR/run.json (kept if already there)."""
  record = read_run_record(workdir)
  if "tokenizer" not in record:
    record["tokenizer"] = tokenizer_record(model_proto)
    atomic_write(epath.Path(workdir) / RUN_FILE, json.dumps(record, indent=2))


def load_tokenizer(workdir) -> tokenizer_lib.Tokenizer:
  """WORKDIR/spm.model, checked against the tokenizer the run recorded (run.json).

  A missing, unreadable or different spm.model is an error: the checkpoints' token
  ids mean nothing with another vocabulary.
  """
  path = epath.Path(workdir) / TOKENIZER_FILE
  expected = read_run_record(workdir).get("tokenizer")
  bound = (f" The run in {workdir} was trained with the tokenizer of sha256"
           f" {expected['sha256']} ({expected['vocab_size']} pieces): put that"
           " spm.model back" if expected else f" Put the run's spm.model back in {workdir}")
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing.{bound}, or train a new run in a new"
                            " workdir.")
  proto = path.read_bytes()
  try:
    tokenizer = tokenizer_lib.Tokenizer(proto)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path} is not a readable SentencePiece model ({e}).{bound}."
                     ) from None
  if expected:
    found = tokenizer_record(proto)
    if found != expected:
      raise ValueError(f"{path} is not the tokenizer the checkpoints were trained"
                       f" with: it has sha256 {found['sha256']} and"
                       f" {found['vocab_size']} pieces.{bound} (or use a new workdir).")
  return tokenizer


def _read_only(directory) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(absolute(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True))


def checkpoint_steps(directory) -> list[int]:
  """The steps saved in a checkpoint directory, oldest first ([] if there is none)."""
  directory = absolute(directory)
  return sorted(_read_only(directory).all_steps()) if directory.exists() else []


def restore_params(directory, step: int, abstract_params):
  """The `params` item of `step`, laid out as `abstract_params` says.

  `abstract_params` is a tree of `jax.ShapeDtypeStruct` with shardings (from
  `Partitioner.abstract_params`): orbax reads each shard onto its device, so a
  checkpoint written on one mesh restores onto another.
  """
  return _read_only(directory).restore(step, args=ocp.args.Composite(
      **{PARAMS: ocp.args.StandardRestore(abstract_params)}))[PARAMS]


def save_params(directory, step: int, params) -> None:
  """Writes a params-only checkpoint, replacing one of the same step."""
  manager = ocp.CheckpointManager(absolute(directory), options=(
      ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)))
  if step in manager.all_steps():
    manager.delete(step)
  manager.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params)}),
               force=True)
  manager.close()
