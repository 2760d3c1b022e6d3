"""Trains an En->Fr Transformer: `python train.py --config=configs/default.py --workdir=DIR`.

After the last step, the last `average_last_checkpoints` checkpoints are averaged and
scored on `final_eval_splits` (WORKDIR/results.json): one command is the whole recipe.

Run the same command on every host of a multi-host slice. On TPU and SLURM-style
clusters the hosts find each other by themselves; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
import json

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tokenizer, checkpoints"
                               " and logs go (local path or gs://).", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so jax.distributed.initialize runs before anything touches devices.
  from parallel import mesh  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  mesh.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                              _PROCESS_ID.value)
  from training import trainer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = _CONFIG.value
  result = trainer.run(config, _WORKDIR.value)
  print(json.dumps({"final_validation": result}))
  if config.final_eval_splits and result["step"] == config.num_train_steps:
    # The recipe's end: average the last checkpoints and score them (results.json).
    from inference import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    for scores in evaluate.evaluate_run(
        _WORKDIR.value, mesh.create_mesh((-1, 1, 1)), splits=config.final_eval_splits,
        average_last=config.average_last_checkpoints,
        beam_size=config.eval_beam_size, alpha=config.eval_alpha):
      print(json.dumps(scores))


if __name__ == "__main__":
  app.run(main)
