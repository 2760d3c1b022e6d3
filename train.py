"""Trains an En->Fr Transformer: `python train.py --config=configs/default.py --workdir=DIR`.

After the last step, the last `average_last_checkpoints` checkpoints are averaged and
scored on `final_eval_splits` (WORKDIR/results.json): one command is the whole recipe
(recipes/train_and_score.py). Training reports validation BLEU through an evaluator
built from inference code, and the final scoring runs after training ends.

Run the same command on every host of a multi-host slice. On TPU and SLURM-style
clusters the hosts find each other by themselves; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
from absl import app

from cli import logs
from cli import training_flags
from recipes import train_and_score
from training import lock
from training import validate


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = training_flags.CONFIG.value, training_flags.WORKDIR.value
  validate.validate_config(config)  # Before anything is written.
  training_flags.initialize_distributed()  # Before anything touches the devices.
  with lock.workdir_lock(workdir):  # One training per workdir.
    train_and_score.train_and_score(config, workdir)


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
