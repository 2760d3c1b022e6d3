"""Training data for sequence-level distillation: the dataset's sources, the teacher's
translations as targets (distill.py writes them, one line per training example), and
optionally the original pairs as well.

`DistilledSource` stays a plain random-access sequence of {source_lang: bytes,
target_lang: bytes} dicts, so grain's shuffling, sharding and checkpointable
iterators work on it as on the TFDS source it wraps.
"""
from collections.abc import Sequence

from absl import logging
from etils import epath

from data import datasets


def read_targets(path, count: int) -> list[bytes]:
  """The first `count` lines of `path` (UTF-8, one per training example), as bytes."""
  data = epath.Path(path).read_bytes()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":  # The final newline ends the last line.
    lines.pop()
  if len(lines) < count:
    raise ValueError(f"{path} has {len(lines)} lines, fewer than the {count} training"
                     " examples it must translate. Delete it and rerun distill.py to"
                     " translate them again.")
  return lines[:count]


class DistilledSource(Sequence):
  """source[i] with its target side replaced by targets[i], for i < n = len(targets).

  With `with_references`, indices n ... 2n - 1 are source[0 ... n - 1] as they are
  (reference targets), so each source is seen with both targets. Examples past n
  (distill.max_train_sentences) are not used at all.
  """

  def __init__(self, source, targets: Sequence[bytes], source_lang: str,
               target_lang: str, with_references: bool = False):
    if len(targets) > len(source):
      raise ValueError(f"{len(targets)} targets for a source of {len(source)}"
                       " examples.")
    self.source, self.targets = source, list(targets)
    self.source_lang, self.target_lang = source_lang, target_lang
    self.with_references = with_references

  def __len__(self) -> int:
    return len(self.targets) * (2 if self.with_references else 1)

  def _source_index(self, index: int) -> int:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    return index % len(self.targets)

  def _pair(self, index: int, example) -> dict:
    target = (self.targets[index] if index < len(self.targets)
              else example[self.target_lang])  # The reference half.
    return {self.source_lang: example[self.source_lang], self.target_lang: target}

  def __getitem__(self, index):
    index = int(index)
    return self._pair(index, self.source[self._source_index(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    """Batched read of the wrapped source (TFDS reads a batch ~3x faster)."""
    indices = [int(i) for i in indices]
    examples = datasets.read_examples(self.source,
                                      [self._source_index(i) for i in indices])
    return [self._pair(i, ex) for i, ex in zip(indices, examples)]


def distilled_source(source, path, count: int, source_lang: str, target_lang: str,
                     with_references: bool = False) -> DistilledSource:
  """The first `count` examples of `source` with the targets read from `path`.

  With `with_references`, also those examples with their own targets. Logs how many
  teacher outputs are empty: training drops those pairs (its filter drops empty
  sides), so they cost the student data.
  """
  targets = read_targets(path, count)
  empty = sum(1 for t in targets if not t.strip())
  logging.info("Distilled training data: %d pairs from %s%s; %d empty teacher"
               " outputs (training drops those pairs).", count, path,
               f", and the same {count} sources with their references"
               if with_references else "", empty)
  if empty:
    logging.warning("The teacher gave %d empty translations of %d; training drops"
                    " them.", empty, count)
  return DistilledSource(source, targets, source_lang, target_lang, with_references)
