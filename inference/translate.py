"""Text in, text out: clean input lines, batch by length, decode, restore the order.

Every input line gives exactly one output line, in input order: empty lines, and
lines of only whitespace, BOM or zero-width characters, give empty lines without
reaching the model, invalid UTF-8 is replaced (with a warning), over-long lines are
truncated to the model's limit (with a warning), and no hypothesis holds a newline,
carriage return or tab.
Sentences are sorted by length into a few bucket lengths and batched by a token
budget, so the decoder compiles for a handful of shapes only.
"""
from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import itertools
import math
import os
import re
import sys
from typing import Any, BinaryIO

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from data import tokenizer as tokenizer_lib
from models import decoding
from parallel.sharding import Partitioner

BUCKETS = (8, 16, 32, 64, 128, 256, 512)
MAX_ROWS = 256  # Rows per batch at most, whatever the token budget allows.

# Characters that would break one output line per input line or the n-best
# `hyp<TAB>score` format; byte-fallback pieces can decode to them.
_LINE_BREAKERS = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
# Whitespace, BOM and zero-width characters: a line of only these is empty.
_EDGES = re.compile(r"^[\s\ufeff\u200b\u200c\u200d\u2060]+"
                    r"|[\s\ufeff\u200b\u200c\u200d\u2060]+$")

# decode(inputs [batch, src_len] int32) -> (tokens [batch, nbest, out_len],
#                                           scores [batch, nbest])
DecodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to search: the fields of `config.decode`, saved with the run."""
  beam_size: int = 4  # 1 is greedy.
  alpha: float = 0.6  # GNMT length penalty exponent.
  max_len_a: float = 1.5  # Output limit a * source_len + b tokens, EOS included.
  max_len_b: float = 10.0

  @classmethod
  def from_config(cls, decode_cfg: Any | None) -> "DecodeSettings":
    """From `config.decode`; a run saved before that block existed gets the defaults."""
    if decode_cfg is None:
      return cls()
    fields = dict(decode_cfg.to_dict() if hasattr(decode_cfg, "to_dict") else decode_cfg)
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  text: str
  score: float  # Sum of log-probabilities over the length penalty.
  ids: tuple[int, ...] = ()  # Target token ids, EOS and padding left out.


@dataclasses.dataclass(frozen=True)
class Translation:
  """One input line's n-best list, best first; empty for an empty line.

  `truncated` says the source was longer than the model's limit and only its first
  tokens were translated.
  """
  nbest: list[Hypothesis]
  truncated: bool = False

  @property
  def text(self) -> str:
    return self.nbest[0].text if self.nbest else ""

  @property
  def score(self) -> float | None:
    return self.nbest[0].score if self.nbest else None

  @property
  def ids(self) -> tuple[int, ...]:
    return self.nbest[0].ids if self.nbest else ()

  def line(self, nbest: int = 1) -> str:
    """The output line: the best text, or `hyp1<TAB>score1<TAB>hyp2...` for nbest > 1."""
    if nbest == 1:
      return self.text
    return "\t".join(f"{h.text}\t{h.score:.4f}" for h in self.nbest)


@dataclasses.dataclass
class Source:
  """One input line, tokenized; `ids` is empty for a line the model need not see."""
  line: int  # 1-based, for messages.
  ids: list[int]
  truncated: bool = False  # Cut to the model's limit.


def read_lines(data: bytes, name: str, first_line: int = 1) -> list[str]:
  """Splits `data` into lines; invalid UTF-8 becomes U+FFFD with a warning per line.

  `first_line` is the number of `data`'s first line in `name`, for the warnings.
  """
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":  # A final newline ends the last line; no extra line.
    lines.pop()
  texts = []
  for number, raw in enumerate(lines, first_line):
    raw = raw.rstrip(b"\r")
    try:
      texts.append(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      logging.warning("%s:%d: invalid UTF-8 (%s at byte %d); replaced with U+FFFD."
                      " Re-encode the file as UTF-8 to avoid this.", name, number,
                      e.reason, e.start)
      texts.append(raw.decode("utf-8", errors="replace"))
  return texts


def read_chunks(stream: BinaryIO, buffer_size: int, name: str
                ) -> Iterator[tuple[int, list[str]]]:
  """(number of the first line, texts) of up to `buffer_size` lines at a time.

  Reads `stream` as it goes, so memory is bounded by the chunk; lines split on
  b"\\n" only, as in `read_lines`, so chunking never changes them.
  """
  first_line = 1
  while chunk := list(itertools.islice(stream, buffer_size)):
    yield first_line, read_lines(b"".join(chunk), name, first_line)
    first_line += len(chunk)


def check_output_path(path: str) -> None:
  """Raises ValueError naming `path` if an output file cannot be written there.

  Called before the model loads, so a typo fails in a second, not after restoring
  and translating. "-" (stdout) and remote paths (scheme://) are not checked.
  """
  if path == "-" or "://" in path:
    return
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ValueError(f"Output file {path} is a directory; give a file path.")
  if not os.path.isdir(parent):
    raise ValueError(f"Output file {path}: directory {parent} does not exist; create it"
                     " or give another path.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"Output file {path}: directory {parent} is not writable; fix its"
                     " permissions or give another path.")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise ValueError(f"Output file {path} exists and is not writable.")


def clean(text: str) -> str:
  """`text` without leading/trailing whitespace, BOM (U+FEFF) or zero-width characters.

  A line holding only those is empty, so it never reaches the model.
  """
  return _EDGES.sub("", text)


def one_line(text: str) -> str:
  """`text` with newline, carriage return and tab replaced by spaces.

  Keeps one output line per input line and the n-best format parseable.
  """
  return text.translate(_LINE_BREAKERS)


def tokenize(texts: Sequence[str], tokenizer, max_len: int, name: str,
             first_line: int = 1) -> list[Source]:
  """Ids + eos per cleaned line, cut to `max_len` tokens (warning names the line).

  `first_line` is the number of `texts[0]` in `name`, for the warnings.
  """
  sources = []
  for number, text in enumerate(texts, 1):
    text = clean(text)
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


def batches(sources: Sequence[Source], batch_tokens: int, max_rows: int = MAX_ROWS
            ) -> Iterable[tuple[list[Source], np.ndarray]]:
  """(sources, inputs [rows, bucket]) batches of similar length within `batch_tokens`.

  A bucket's full batches have min(max_rows, batch_tokens // bucket) rows (the cap
  bounds the beam search's memory when short lines meet a large budget); its last,
  partial batch is padded to a power of two rows, so few distinct shapes are compiled.
  """
  todo = sorted((s for s in sources if s.ids), key=lambda s: len(s.ids))
  for length, group in itertools.groupby(todo, key=lambda s: bucket(len(s.ids))):
    group = list(group)
    per_batch = rows_per_batch(length, batch_tokens, max_rows)
    for start in range(0, len(group), per_batch):
      take = group[start:start + per_batch]
      yield take, pad_batch([s.ids for s in take], length,
                            padded_rows(len(take), per_batch))


def _ids(row: np.ndarray) -> tuple[int, ...]:
  """A decoded row's token ids up to EOS, padding left out."""
  ids = row.tolist()
  if tokenizer_lib.EOS_ID in ids:
    ids = ids[:ids.index(tokenizer_lib.EOS_ID)]
  return tuple(i for i in ids if i != tokenizer_lib.PAD_ID)


def hypotheses(tokens: np.ndarray, scores: np.ndarray, tokenizer, count: int
               ) -> list[list[Hypothesis]]:
  """The n-best lists of the first `count` rows of a decoded batch.

  tokens [rows, nbest, out_len], scores [rows, nbest]; texts hold no line breakers.
  """
  return [[Hypothesis(one_line(tokenizer.decode(tokens[r, k])), float(scores[r, k]),
                      _ids(tokens[r, k])) for k in range(tokens.shape[1])]
          for r in range(count)]


def translate(texts: Sequence[str], tokenizer: tokenizer_lib.Tokenizer,
              decode: DecodeFn, *, max_len: int, batch_tokens: int,
              max_rows: int = MAX_ROWS, name: str = "<input>", first_line: int = 1,
              progress: bool = False) -> list[Translation]:
  """One Translation per text, in order; empty texts never reach the decoder.

  Hypothesis texts hold no newline, carriage return or tab (see `one_line`).
  Warnings name `name`:line, counting `texts[0]` as line `first_line`.
  """
  sources = tokenize(texts, tokenizer, max_len, name, first_line)
  outputs = [Translation([]) for _ in sources]
  work = list(batches(sources, batch_tokens, max_rows))
  for batch, inputs in tqdm.tqdm(work, disable=not progress, file=sys.stderr,
                                 unit="batch"):
    tokens, scores = decode(inputs)  # [rows, nbest, out_len], [rows, nbest]
    for source, nbest in zip(batch, hypotheses(tokens, scores, tokenizer, len(batch))):
      outputs[source.line - 1] = Translation(nbest, source.truncated)
  return outputs


def global_batch(partitioner: Partitioner, inputs: np.ndarray) -> jax.Array:
  """`inputs` [rows, ...] as a global array, rows over ('data', 'fsdp') as they divide.

  Every process holds the same `inputs` (multi-host).
  """
  return jax.make_array_from_callback(
      inputs.shape, partitioner.batch_sharding(inputs.shape[:2]), lambda i: inputs[i])


class Decoder:
  """The jitted beam search over a partitioner's mesh, compiled once per shape.

  `bind(graphdef, params)` gives the DecodeFn of one set of parameters; binding new
  parameters of the same structure (e.g. at each validation pass) reuses the
  compilations. A compilation serves one (rows, bucket, beam_size, nbest) and KV cache
  length, static per source bucket: min(max_len, ceil(a * bucket + b)); alpha, a and
  b are traced, so new values of alpha do not recompile.
  """

  def __init__(self, partitioner: Partitioner, settings: DecodeSettings, *,
               max_len: int, nbest: int = 1):
    self.partitioner = partitioner
    self.settings = settings
    self.max_len = max_len
    self.nbest = nbest
    self._search = decoding.jit_beam_search(partitioner)

  def bind(self, graphdef: nnx.GraphDef, params: nnx.State) -> DecodeFn:
    """decode(inputs, settings=None, nbest=None); None: the Decoder's own."""

    def decode(inputs: np.ndarray, settings: DecodeSettings | None = None,
               nbest: int | None = None) -> tuple[np.ndarray, np.ndarray]:
      s = settings or self.settings
      max_decode_len = min(self.max_len, math.ceil(s.max_len_a * inputs.shape[1]
                                                   + s.max_len_b))
      out = self._search(graphdef, params, global_batch(self.partitioner, inputs),
                         float(s.alpha), float(s.max_len_a), float(s.max_len_b),
                         eos_id=tokenizer_lib.EOS_ID, beam_size=s.beam_size,
                         max_decode_len=max_decode_len, nbest=nbest or self.nbest)
      # Every process gets back all rows (multi-host).
      return (multihost_utils.process_allgather(out.tokens, tiled=True),
              multihost_utils.process_allgather(out.scores, tiled=True))
    return decode
