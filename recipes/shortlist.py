"""Builds a run's vocabulary shortlist (inference/shortlist.py) from its training
pairs, with the run's tokenizer, and measures what it covers on validation."""
from absl import logging

from data import datasets
from data import tokenizer as tokenizer_lib
from inference import shortlist as shortlist_lib
from storage import layout


def _id_pairs(source, tokenizer, source_lang: str, target_lang: str):
  """(source ids, target ids) of every example of a split, as the decoder sees them."""
  sources, targets = datasets.text_pairs(source, source_lang, target_lang)
  for src, tgt in zip(sources, targets):
    yield tokenizer.encode(src), tokenizer.encode(tgt)


def build_for_workdir(workdir: str, *, always: int, per_source: int) -> dict:
  """Writes WORKDIR/shortlist.npz; returns its path, sizes and validation coverage."""
  config = layout.read_config(workdir)
  data_cfg = config.data
  tokenizer = tokenizer_lib.load_from_workdir(workdir)
  sources = datasets.load_sources(data_cfg, ["train", "validation"])
  langs = (data_cfg.source_lang, data_cfg.target_lang)
  shortlist = shortlist_lib.build(_id_pairs(sources["train"], tokenizer, *langs),
                                  tokenizer.vocab_size, always=always,
                                  per_source=per_source)
  path = shortlist_lib.save(shortlist, workdir)
  logging.info("Wrote %s", path)
  stats = shortlist_lib.coverage(shortlist,
                                 _id_pairs(sources["validation"], tokenizer, *langs))
  return {"shortlist": str(path), "always": int(len(shortlist.always)),
          "per_source": per_source, "train_pairs": len(sources["train"]),
          **{f"validation_{k}" if k != "vocab_size" else k: v
             for k, v in stats.items()}}
