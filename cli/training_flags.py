"""The flags every training job takes (train.py, distill.py), defined once here.

`--config` (an ml_collections config file; `--config.FIELD=VALUE` overrides a field;
default this checkout's configs/default.py, wherever the command runs from),
`--workdir`, and the multi-process flags. On TPU and SLURM-style clusters the hosts
find each other by themselves; elsewhere pass --coordinator_address, --num_processes
and --process_id on every process.
"""
import pathlib

from absl import flags
from ml_collections import config_flags

from parallel import mesh

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
CONFIG = config_flags.DEFINE_config_file(
    "config", str(DEFAULT_CONFIG), "Experiment config file.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Where the tokenizer, checkpoints"
                              " and logs go (local path or gs://).", required=True)
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "host:port of process 0, for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed() -> None:
  """Joins the multi-process runtime the flags describe; before any device use."""
  mesh.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value,
                              PROCESS_ID.value)
