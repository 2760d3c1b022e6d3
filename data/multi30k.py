"""TFDS builder for Multi30k task 1 (English–French image captions), as array_record.

On a connected machine it downloads the raw `.gz` files from github.com/multi30k/dataset.
With a manual directory (`--config.data.manual_dir`, default `$MULTI30K_DIR`) it builds
offline from whichever split files are there and logs the splits it skipped.

The built dataset records the sha256 of every raw file it read (its metadata.json,
`info.metadata['raw_files']`). TFDS reuses a built dataset without looking at the
manual directory again, so `check_raw_files` compares them on every load: other files
there (a changed file or `$MULTI30K_DIR`) are an error, not silently the old data.
"""
import gzip
import hashlib
import os

from absl import logging
from etils import epath
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


# info.metadata key: {raw file name, e.g. 'train.en.gz': sha256} of the files read.
RAW_FILES = "raw_files"


class LineCountMismatchError(Exception):
  """The two sides of a parallel corpus do not have the same number of lines."""


class RawFilesChangedError(ValueError):
  """The manual directory's raw files are not those the built dataset was made from."""


def _sha256(path) -> str:
  return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def manual_files(manual_dir) -> dict[str, dict[str, epath.Path]]:
  """{split: {'en': path, 'fr': path}}: the splits with both files in `manual_dir`."""
  manual_dir = epath.Path(manual_dir)
  found = {}
  for split, stem in SPLIT_FILES.items():
    paths = {lang: manual_dir / f"{stem}.{lang}.gz" for lang in ("en", "fr")}
    if all(p.exists() for p in paths.values()):
      found[split] = paths
  return found


def _checksums(files: dict[str, dict[str, os.PathLike]]) -> dict[str, str]:
  """{'train.en.gz': sha256, ...} of `manual_files`-shaped {split: {lang: path}}."""
  return {f"{SPLIT_FILES[split]}.{lang}.gz": _sha256(path)
          for split, paths in files.items() for lang, path in paths.items()}


def check_raw_files(info: tfds.core.DatasetInfo, manual_dir) -> None:
  """Raises RawFilesChangedError unless `manual_dir` holds the files `info`'s dataset
  was built from (same names, same sha256), naming each difference and the fix."""
  recorded = (info.metadata or {}).get(RAW_FILES)
  if recorded is None:
    logging.warning(
        "%s records no checksums of its raw files (built by an older version), so it"
        " cannot be checked against %s. Delete it to rebuild with checksums.",
        info.data_dir, manual_dir)
    return
  found = _checksums(manual_files(manual_dir))

  def difference(name: str) -> str:
    if name not in recorded:
      return "new"
    if name in found:
      return "changed"
    return "unpaired now" if (epath.Path(manual_dir) / name).exists() else "missing now"
  differences = sorted(f"{name} {difference(name)}"
                       for name in set(recorded) | set(found)
                       if recorded.get(name) != found.get(name))
  if differences:
    raise RawFilesChangedError(
        f"The Multi30k dataset in {info.data_dir} was built from other raw files than"
        f" those in {manual_dir} ({'; '.join(differences)}). Delete {info.data_dir}"
        " to rebuild it from these files (a run trained on the old data then sees"
        " other examples), or point config.data.manual_dir / $MULTI30K_DIR back at"
        " the files it was built from.")


def read_lines(path: str) -> list[str]:
  r"""Reads a (possibly gzipped) UTF-8 text file into lines without newlines.

  Splits on "\n" only (one trailing "\r" per line is dropped): `str.splitlines` and
  universal newlines would also split on U+2028, U+0085, "\x1c", a lone "\r"...
  inside a sentence and silently misalign the parallel pairs.
  """
  data = epath.Path(path).read_bytes()  # Through epath: manual_dir may be gs://.
  if str(path).endswith(".gz"):
    data = gzip.decompress(data)
  try:
    lines = data.decode("utf-8").split("\n")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})."
                     " Re-encode the file as UTF-8.") from e
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
        metadata=tfds.core.MetadataDict(),  # RAW_FILES, filled in by the build.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # No manual directory, or it is empty: download.
      manual_dir = None
    if manual_dir is None:
      urls = {split: {lang: _RAW_URL.format(stem, lang) for lang in ("en", "fr")}
              for split, stem in SPLIT_FILES.items()}
      files = dl_manager.download(urls)
    else:
      files = manual_files(manual_dir)
      if "train" not in files:
        raise FileNotFoundError(
            f"{manual_dir} has no train.en.gz/train.fr.gz. "
            + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      skipped = [split for split in SPLIT_FILES if split not in files]
      if skipped:
        logging.warning("Multi30k: %s lacks files for splits %s; building without"
                        " them.", manual_dir, ", ".join(skipped))
    self.info.metadata[RAW_FILES] = _checksums(files)  # Saved with the dataset.
    return {split: self._generate_examples(p["en"], p["fr"])
            for split, p in files.items()}

  def _generate_examples(self, en_path, fr_path):
    en, fr = read_parallel(os.fspath(en_path), os.fspath(fr_path))
    for i, (en_line, fr_line) in enumerate(zip(en, fr)):
      yield i, {"en": en_line, "fr": fr_line}
