"""Trains an En->Fr Transformer: `python train.py --config=configs/default.py --workdir=DIR`.

For now this prepares the data of the config (TFDS build, SentencePiece tokenizer in the
workdir) and prints split sizes and vocabulary statistics; the training loop follows.
"""
import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from data import datasets
from data import prepare

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the tokenizer, checkpoints"
                               " and logs go (local path or gs://).", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  sources, tokenizer = prepare.prepare(config, _WORKDIR.value)
  print(json.dumps({"dataset": config.data.dataset,
                    "split_sizes": datasets.split_sizes(config.data)}))
  print(json.dumps({"vocab_size": tokenizer.vocab_size,
                    "train": prepare.corpus_stats(sources["train"], tokenizer,
                                                  config.data, config.seed)}))
  logging.info("Data ready in %s.", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
