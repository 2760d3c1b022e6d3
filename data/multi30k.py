"""TFDS builder for Multi30k task 1 (English–French image captions), as array_record.

On a connected machine it downloads the raw `.gz` files from github.com/multi30k/dataset.
With a manual directory (`--config.data.manual_dir`, default `$MULTI30K_DIR`) it builds
offline from whichever split files are there and logs the splits it skipped.
"""
import gzip
import os

from absl import logging
import tensorflow_datasets as tfds

_RAW_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{}.{}.gz"

# TFDS split name -> file stem in data/task1/raw.
SPLIT_FILES = {
    "train": "train",
    "validation": "val",
    "test_2016_flickr": "test_2016_flickr",
    "test_2017_flickr": "test_2017_flickr",
    "test_2017_mscoco": "test_2017_mscoco",
    "test_2018_flickr": "test_2018_flickr",
}

_CITATION = """\
@inproceedings{elliott-etal-2016-multi30k,
  title = {Multi30K: Multilingual English-German Image Descriptions},
  author = {Elliott, Desmond and Frank, Stella and Sima'an, Khalil and Specia, Lucia},
  booktitle = {Proceedings of the 5th Workshop on Vision and Language},
  year = {2016},
}"""


class LineCountMismatchError(Exception):
  """The two sides of a parallel corpus do not have the same number of lines."""


def read_lines(path: str) -> list[str]:
  r"""Reads a (possibly gzipped) UTF-8 text file into lines without newlines.

  Splits on "\n" only (one trailing "\r" per line is dropped): `str.splitlines` and
  universal newlines would also split on U+2028, U+0085, "\x1c", a lone "\r"...
  inside a sentence and silently misalign the parallel pairs.
  """
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", newline="") as f:
    lines = f.read().split("\n")
  if lines[-1] == "":  # A final newline ends the last line; no extra line.
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_parallel(src_path: str, tgt_path: str) -> tuple[list[str], list[str]]:
  """Reads two line-aligned files; a line-count mismatch is an error naming both."""
  src, tgt = read_lines(src_path), read_lines(tgt_path)
  if len(src) != len(tgt):
    raise LineCountMismatchError(
        f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: the files"
        " must be line-aligned translations. Re-download or fix the shorter file.")
  return src, tgt


class Multi30k(tfds.core.GeneratorBasedBuilder):
  """Multi30k task 1: Flickr30k captions with professional translations."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Task 1 raw text, en-fr."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="en-fr", description="English to French.")
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. For offline builds put the raw files `<split>.en.gz` and"
      " `<split>.fr.gz` of github.com/multi30k/dataset data/task1/raw (splits: "
      + ", ".join(SPLIT_FILES.values()) + ") in one folder and point"
      " `--config.data.manual_dir` or $MULTI30K_DIR at it.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Multi30k task 1, English-French caption pairs.",
        features=tfds.features.Translation(languages=("en", "fr")),
        supervised_keys=("en", "fr"),
        homepage="https://github.com/multi30k/dataset",
        citation=_CITATION,
        # Keep the files' line order: evaluation output aligns with the references.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # No manual directory, or it is empty: download.
      manual_dir = None
    if manual_dir is None:
      urls = {split: {lang: _RAW_URL.format(stem, lang) for lang in ("en", "fr")}
              for split, stem in SPLIT_FILES.items()}
      paths = dl_manager.download(urls)
      return {split: self._generate_examples(p["en"], p["fr"])
              for split, p in paths.items()}

    generators, skipped = {}, []
    for split, stem in SPLIT_FILES.items():
      en, fr = (manual_dir / f"{stem}.{lang}.gz" for lang in ("en", "fr"))
      if en.exists() and fr.exists():
        generators[split] = self._generate_examples(en, fr)
      else:
        skipped.append(split)
    if "train" not in generators:
      raise FileNotFoundError(
          f"{manual_dir} has no train.en.gz/train.fr.gz. "
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if skipped:
      logging.warning("Multi30k: %s lacks files for splits %s; building without them.",
                      manual_dir, ", ".join(skipped))
    return generators

  def _generate_examples(self, en_path, fr_path):
    en, fr = read_parallel(os.fspath(en_path), os.fspath(fr_path))
    for i, (en_line, fr_line) in enumerate(zip(en, fr)):
      yield i, {"en": en_line, "fr": fr_line}
