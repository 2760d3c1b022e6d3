"""Token ids in batches of few shapes: tokenize lines, bucket by length, pad.

Sentences are sorted by length into a few bucket lengths and batched by a token
budget, so the decoder (and the scorer) compiles for a handful of shapes only.
Over-long lines are cut to the model's limit (with a warning); lines that are empty
once cleaned (`text_io.clean`) get no ids and never reach the model.
"""
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import itertools
from typing import TypeVar

from absl import logging
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import text_io

BUCKETS = (8, 16, 32, 64, 128, 256, 512)
MAX_ROWS = 256  # Rows per batch at most, whatever the token budget allows.

T = TypeVar("T")


@dataclasses.dataclass
class Source:
  """One input line, tokenized; `ids` is empty for a line the model need not see."""
  line: int  # 1-based, for messages.
  ids: list[int]
  truncated: bool = False  # Cut to the model's limit.


def tokenize(texts: Sequence[str], tokenizer, max_len: int, name: str,
             first_line: int = 1) -> list[Source]:
  """Ids + eos per cleaned line, cut to `max_len` tokens (warning names the line).

  `first_line` is the number of `texts[0]` in `name`, for the warnings.
  """
  sources = []
  for number, text in enumerate(texts, 1):
    text = text_io.clean(text)
    if not text:
      sources.append(Source(number, []))
      continue
    ids = tokenizer.encode(text) + [tokenizer_lib.EOS_ID]
    if len(ids) > max_len:
      logging.warning("%s:%d: %d tokens, more than the model's limit of %d;"
                      " translating the first %d. Split the line to translate all"
                      " of it.", name, first_line + number - 1, len(ids), max_len,
                      max_len - 1)
      sources.append(Source(number, ids[:max_len - 1] + [tokenizer_lib.EOS_ID], True))
    else:
      sources.append(Source(number, ids))
  return sources


def bucket(length: int) -> int:
  """The padded length of a row of `length` tokens: the next of BUCKETS."""
  return next((b for b in BUCKETS if b >= length), length)


def rows_per_batch(length: int, batch_tokens: int, max_rows: int = MAX_ROWS) -> int:
  """Rows of a full batch of bucket `length` within `batch_tokens` (at least 1)."""
  return max(1, min(max_rows, batch_tokens // length))


def padded_rows(count: int, per_batch: int) -> int:
  """Rows a batch of `count` sentences is padded to: a power of two, or `per_batch`."""
  return min(per_batch, 1 << (count - 1).bit_length())


def batch_shapes(max_len: int, batch_tokens: int, max_rows: int = MAX_ROWS
                 ) -> list[tuple[int, int]]:
  """Every (rows, bucket) input shape `batches` can give for rows of <= max_len tokens.

  What a server compiles before it reports ready.
  """
  shapes = []
  for length in [b for b in BUCKETS if b < max_len] + [bucket(max_len)]:
    per_batch = rows_per_batch(length, batch_tokens, max_rows)
    rows = {padded_rows(n, per_batch) for n in range(1, per_batch + 1)}
    shapes += [(r, length) for r in sorted(rows)]
  return shapes


def pad_batch(id_lists: Sequence[Sequence[int]], length: int, rows: int) -> np.ndarray:
  """inputs [rows, length] int32: one row per id list, the rest PAD."""
  inputs = np.full((rows, length), tokenizer_lib.PAD_ID, np.int32)
  for r, ids in enumerate(id_lists):
    inputs[r, :len(ids)] = ids
  return inputs


def group(items: Sequence[T], length: Callable[[T], int], batch_tokens: int,
          max_rows: int = MAX_ROWS) -> Iterator[tuple[list[T], int, int]]:
  """(items, bucket, rows) batches of items of similar `length` within `batch_tokens`.

  A bucket's full batches have min(max_rows, batch_tokens // bucket) rows (the cap
  bounds the beam search's memory when short lines meet a large budget); its last,
  partial batch is padded to a power of two rows, so few distinct shapes are compiled.
  """
  todo = sorted(items, key=length)
  for size, members in itertools.groupby(todo, key=lambda item: bucket(length(item))):
    members = list(members)
    per_batch = rows_per_batch(size, batch_tokens, max_rows)
    for start in range(0, len(members), per_batch):
      take = members[start:start + per_batch]
      yield take, size, padded_rows(len(take), per_batch)


def batches(sources: Sequence[Source], batch_tokens: int, max_rows: int = MAX_ROWS
            ) -> Iterator[tuple[list[Source], np.ndarray]]:
  """(sources, inputs [rows, bucket]) batches of the non-empty `sources` (`group`)."""
  for take, length, rows in group([s for s in sources if s.ids],
                                  lambda s: len(s.ids), batch_tokens, max_rows):
    yield take, pad_batch([s.ids for s in take], length, rows)
