"""Trains an En->Fr Transformer: `python train.py --config=configs/default.py --workdir=DIR`.

After the last step, the last `average_last_checkpoints` checkpoints are averaged and
scored on `final_eval_splits` (WORKDIR/results.json): one command is the whole recipe.
This file wires the phases together: training reports validation BLEU through an
evaluator built from inference code, and the final scoring runs after training ends.

Run the same command on every host of a multi-host slice. On TPU and SLURM-style
clusters the hosts find each other by themselves; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""
import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data import datasets
from data import prepare
from inference import evaluate
from inference import translate
from parallel import mesh
from parallel.sharding import Partitioner
from training import lock
from training import trainer
from training import validate

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tokenizer, checkpoints"
                               " and logs go (local path or gs://).", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def validation_bleu(config, validation, tokenizer, partitioner: Partitioner
                    ) -> list[trainer.Evaluator]:
  """BLEU of beam search (config.decode) on `config.eval_bleu_sentences` pairs."""
  if config.eval_bleu_sentences == 0:
    return []
  limit = None if config.eval_bleu_sentences < 0 else config.eval_bleu_sentences
  sources, references = datasets.text_pairs(
      validation, config.data.source_lang, config.data.target_lang, limit)
  decoder = translate.Decoder(
      partitioner, translate.DecodeSettings.from_config(config.decode),
      max_len=config.model.max_len)
  return [evaluate.BleuEvaluator(sources, references, tokenizer, decoder,
                                 batch_tokens=config.batch_tokens)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  validate.validate_config(config)  # Before anything is written.
  # Before anything touches the devices.
  mesh.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                              _PROCESS_ID.value)
  with lock.workdir_lock(workdir):  # One training per workdir.
    train_and_score(config, workdir)


def train_and_score(config, workdir: str, train_transform=None) -> None:
  """Prepares the data, trains, then averages and scores the last checkpoints.

  `train_transform` maps the training data source to the one training reads (see
  `prepare.prepare_on_all_processes`; distill.py swaps in the teacher's targets);
  validation and the final scores always use the dataset's own references.
  """
  partitioner = Partitioner.from_config(config)
  sources, tokenizer = prepare.prepare_on_all_processes(config, workdir,
                                                        train_transform)
  validate.validate_splits(config, datasets.split_sizes(config.data))
  result = trainer.run(
      config, workdir, partitioner, sources, tokenizer,
      evaluators=validation_bleu(config, sources["validation"], tokenizer, partitioner))
  print(json.dumps({"final_validation": result}))
  if result["interrupted"]:  # Asked to stop (even at the last step): exit now.
    logging.warning("Stopped at step %d on request, after saving it. Rerun the same"
                    " command to finish (training, averaging and scoring).",
                    result["step"])
    return
  if config.final_eval_splits and result["step"] == config.num_train_steps:
    # The recipe's end: average the last checkpoints and score them (results.json).
    for scores in evaluate.evaluate_run(
        workdir, partitioner, splits=config.final_eval_splits,
        average_last=config.average_last_checkpoints,
        settings=translate.DecodeSettings.from_config(config.decode)):
      print(json.dumps(scores))


if __name__ == "__main__":
  app.run(main)
