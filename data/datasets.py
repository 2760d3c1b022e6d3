"""Parallel corpora through TFDS, read as array_record data sources (no TensorFlow).

Every source yields examples `{'en': bytes, 'fr': bytes}` by random access, which is
what grain needs for deterministic shuffling, sharding and checkpointable iterators.
This module does not import grain: inference reads text through it without grain.
"""
from collections.abc import Sequence
import dataclasses

from absl import logging
from etils import epath
import tensorflow_datasets as tfds
# Registers 'wmt14_translate': TFDS's lazy catalogue does not find it without TensorFlow.
from tensorflow_datasets.translate import wmt14  # pylint: disable=unused-import

from data import multi30k  # Also registers 'multi30k'.

# config.data.dataset -> TFDS name. Both have 'en' and 'fr' text features.
DATASETS = {
    "multi30k": "multi30k/en-fr",
    "wmt14": "wmt14_translate/fr-en",
}


class CorruptDatasetError(RuntimeError):
  """A built array_record file failed its chunk checksums: the data on disk changed."""


@dataclasses.dataclass(frozen=True)
class CheckedSource:
  """A TFDS data source whose read errors name the split's files and how to rebuild.

  array_record (Riegeli) checks a hash of every chunk it reads, so flipped bytes in a
  built file raise there; without this wrapper the error names neither file nor fix.
  """
  source: Sequence[dict]

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    return self._read(self.source.__getitem__, index)

  def __getitems__(self, indices):
    return self._read(self.source.__getitems__, indices)

  def __iter__(self):  # Without it, `for` would index past the end (no IndexError).
    return (self[i] for i in range(len(self)))

  def __getattr__(self, name):  # dataset_info, split, ...
    if name == "source" or name.startswith("__"):  # Unpickling: not set yet.
      raise AttributeError(name)
    return getattr(self.source, name)

  def _read(self, read, key):
    try:
      return read(key)
    except RuntimeError as e:
      info = self.source.dataset_info
      files = ", ".join(str(p) for p in info.splits[self.source.split].filepaths)
      raise CorruptDatasetError(
          f"{files} could not be read ({e}): the built dataset is damaged. Delete"
          f" {info.data_dir} to rebuild it from its raw files.") from e


def load_sources(data_cfg, splits: Sequence[str]) -> dict[str, Sequence[dict]]:
  """Prepares the configured dataset (once) and returns a data source per split.

  Args:
    data_cfg: `config.data` (fields `dataset`, `tfds_data_dir`, `manual_dir`).
    splits: split names to return, e.g. ('train', 'validation').
  """
  if data_cfg.dataset not in DATASETS:
    raise ValueError(f"config.data.dataset={data_cfg.dataset!r}; expected one of "
                     f"{sorted(DATASETS)}.")
  name = DATASETS[data_cfg.dataset]
  manual_dir = data_cfg.manual_dir or None
  # epath, not os.path: the folder may be a gs:// URL.
  if manual_dir is not None and not epath.Path(manual_dir).is_dir():
    raise FileNotFoundError(
        f"config.data.manual_dir={manual_dir!r} is not a directory. Point it (or"
        " $MULTI30K_DIR) at the folder with the raw .gz files, or leave it empty to"
        " download.")
  try:
    sources = tfds.data_source(
        name, split=list(splits), data_dir=data_cfg.tfds_data_dir or None,
        builder_kwargs={"file_format": "array_record"},
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)})
  except ValueError as e:  # An unknown split: say how to get it.
    raise ValueError(
        f"{name}: {e} A split is missing when its raw files were not in the manual"
        " directory at build time: add them and delete the dataset's folder under"
        " config.data.tfds_data_dir to rebuild.") from e
  if data_cfg.dataset == "multi30k" and manual_dir is not None and sources:
    # TFDS reuses a built dataset as it is: the raw files must still be the same.
    multi30k.check_raw_files(sources[0].dataset_info, manual_dir)
  logging.info("%s: %s", name, {s: len(src) for s, src in zip(splits, sources)})
  return {split: CheckedSource(src) for split, src in zip(splits, sources)}


def split_sizes(data_cfg) -> dict[str, int]:
  """Number of examples in every split the prepared dataset has."""
  name = DATASETS[data_cfg.dataset]
  builder = tfds.builder(name, data_dir=data_cfg.tfds_data_dir or None,
                         file_format="array_record")
  return {s: info.num_examples for s, info in builder.info.splits.items()}


def read_examples(source, indices: Sequence[int]) -> list[dict]:
  """[source[i] for i in indices], in one batched read where the source has one.

  A TFDS array_record source reads a batch about 3x faster than record by record.
  """
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


def decode_text(value) -> str:
  """TFDS Text features arrive as bytes; invalid UTF-8 becomes U+FFFD, not an error."""
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def text_pairs(source, source_lang: str, target_lang: str,
               limit: int | None = None) -> tuple[list[str], list[str]]:
  """(sources, references): the texts of the first `limit` examples of `source`.

  Used to translate and score a split (validation BLEU, evaluation).

  Args:
    source: random-access sequence of {lang: bytes or str}, e.g. a TFDS data source.
    source_lang, target_lang: the example keys to read, e.g. 'en' and 'fr'.
    limit: how many examples; None or negative for all of them.
  """
  count = len(source) if limit is None or limit < 0 else min(limit, len(source))
  examples = read_examples(source, range(count))
  return ([decode_text(ex[source_lang]) for ex in examples],
          [decode_text(ex[target_lang]) for ex in examples])
