"""Train, then average and score: the supervised recipe, from data to results.json.

Training reports validation BLEU through an evaluator built from inference code (so
training/ itself never imports inference/); after the last step, the last
`average_last_checkpoints` checkpoints are averaged and scored on
`final_eval_splits` (WORKDIR/results.json).
"""
import json

from absl import logging

from data import datasets
from inference import decoder as decoder_lib
from inference import evaluate
from parallel.sharding import Partitioner
from recipes import prepare
from training import trainer
from training import validate


def validation_bleu(config, validation, tokenizer, partitioner: Partitioner
                    ) -> list[trainer.Evaluator]:
  """BLEU of beam search (config.decode) on `config.eval_bleu_sentences` pairs."""
  if config.eval_bleu_sentences == 0:
    return []
  limit = None if config.eval_bleu_sentences < 0 else config.eval_bleu_sentences
  sources, references = datasets.text_pairs(
      validation, config.data.source_lang, config.data.target_lang, limit)
  decoder = decoder_lib.Decoder(
      partitioner, decoder_lib.DecodeSettings.from_config(config.decode),
      max_len=config.model.max_len)
  return [evaluate.BleuEvaluator(sources, references, tokenizer, decoder,
                                 batch_tokens=config.batch_tokens)]


def train_and_score(config, workdir: str, train_transform=None) -> None:
  """Prepares the data, trains, then averages and scores the last checkpoints.

  `train_transform` maps the training data source to the one training reads (see
  `prepare.prepare_on_all_processes`; distillation swaps in the teacher's targets);
  validation and the final scores always use the dataset's own references.
  Prints the last validation metrics, then each split's scores, as JSON lines.
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
        settings=decoder_lib.DecodeSettings.from_config(config.decode)):
      print(json.dumps(scores))
