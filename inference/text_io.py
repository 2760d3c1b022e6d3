"""Text files in and out, one sentence a line, and the hygiene of those lines.

Every input line gives exactly one output line: invalid UTF-8 is replaced (with a
warning naming the line), a line of only whitespace, BOM or zero-width characters is
empty (`clean`), and no output holds a newline, carriage return or tab (`one_line`).
Output is UTF-8 whatever the locale's encoding, and an output file appears only once
it is complete (`open_output`), without replacing a FIFO, device or symlink given as
the output. "-" is stdin or stdout.
"""
from collections.abc import Iterator
import contextlib
import io
import itertools
import os
import re
import sys
from typing import BinaryIO

from absl import logging
from etils import epath

from storage import files

STDIO = "-"  # The path that means stdin (input) or stdout (output).

# Characters that would break one output line per input line or the n-best
# `hyp<TAB>score` format; byte-fallback pieces can decode to them.
_LINE_BREAKERS = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
# Whitespace, BOM and zero-width characters: a line of only these is empty.
_EDGES = re.compile(r"^[\s\ufeff\u200b\u200c\u200d\u2060]+"
                    r"|[\s\ufeff\u200b\u200c\u200d\u2060]+$")


def display_name(path: str) -> str:
  """What warnings call the input at `path`: the path, or <stdin>."""
  return "<stdin>" if path == STDIO else path


def open_input(path: str) -> contextlib.AbstractContextManager[BinaryIO]:
  """A binary stream of `path` (local or remote), or of stdin for "-"."""
  if path == STDIO:
    return contextlib.nullcontext(sys.stdin.buffer)
  return epath.Path(path).open("rb")


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


def check_input_path(path: str, flag: str = "--input") -> None:
  """Raises ValueError naming `flag` if `path` is not a readable file ("-": stdin).

  Called before the model loads, so a typo fails in a second.
  """
  if path == STDIO:
    return
  if files.is_remote(path):
    if not epath.Path(path).exists():
      raise ValueError(f"{flag}={path}: no such object; check the path.")
    return
  if os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a directory; give a text file, one sentence"
                     " per line.")
  if not os.path.exists(path):
    raise ValueError(f"{flag}={path}: no such file; check the path.")
  if not os.access(path, os.R_OK):
    raise ValueError(f"{flag}={path} is not readable; fix its permissions.")


def check_output_path(path: str, flag: str = "--output",
                      inputs: tuple[str, ...] = ()) -> None:
  """Raises ValueError naming `flag` if an output file cannot be written at `path`.

  Called before the model loads, so a typo fails in a second, not after restoring
  and translating. Refused: a directory (or a path ending in a slash), a missing or
  unwritable parent directory, an unwritable file, and any of `inputs` (the same
  file, through a link or not: writing it would destroy what is being read). "-"
  (stdout) and remote paths (scheme://) are not checked.
  """
  if path == STDIO or files.is_remote(path):
    return
  if path.endswith(os.sep) or os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a directory; give a file path.")
  target = os.path.realpath(path)  # A symlink's target is what gets written.
  parent = os.path.dirname(target)
  if not os.path.isdir(parent):
    raise ValueError(f"{flag}={path}: directory {parent} does not exist; create it or"
                     " give another path.")
  if not os.path.exists(target) or not files.is_special(target):
    # Regular files are replaced by a rename: the directory must be writable.
    if not os.access(parent, os.W_OK | os.X_OK):
      raise ValueError(f"{flag}={path}: directory {parent} is not writable; fix its"
                       " permissions or give another path.")
  if os.path.exists(target) and not os.access(target, os.W_OK):
    raise ValueError(f"{flag}={path} exists and is not writable.")
  for source in inputs:
    if (source != STDIO and not files.is_remote(source) and os.path.exists(source)
        and os.path.exists(target) and os.path.samefile(source, target)):
      raise ValueError(f"{flag}={path} is the input file {source}: writing it would"
                       " destroy it. Give another output path.")


@contextlib.contextmanager
def open_output(path: str) -> Iterator[BinaryIO]:
  """A binary stream for the output, written as a shell redirect would, but whole.

  "-": stdout. A regular or new file (or a symlink's target) is written to a
  temporary file and renamed over it once every line is written, keeping its mode,
  so a failed run leaves no partial file (and an older output stays as it was); a
  FIFO or device is written directly (`files.open_replacing`). Remote paths are
  written at the end in one piece.
  """
  if path == STDIO:
    sys.stdout.flush()
    yield sys.stdout.buffer
    return
  if files.is_remote(path):
    with contextlib.closing(io.BytesIO()) as buffer:
      yield buffer
      epath.Path(path).write_bytes(buffer.getvalue())
    return
  with files.open_replacing(path) as f:
    yield f


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


def split_prefixes(texts: list[str]) -> tuple[list[str], list[str | None]]:
  """`source<TAB>prefix` lines as (sources, target prefixes); no tab: no prefix.

  Only the first tab splits, so a prefix may hold tabs of its own.
  """
  pairs = [text.split("\t", 1) for text in texts]
  return [p[0] for p in pairs], [p[1] if len(p) == 2 else None for p in pairs]


def read_prefixed_chunks(stream: BinaryIO, prefixes: BinaryIO, buffer_size: int,
                         name: str, prefix_name: str
                         ) -> Iterator[tuple[int, list[str], list[str | None]]]:
  """(first line, texts, target prefixes) of two line-aligned streams, chunk by chunk
  (`read_chunks`); an empty prefix line is no prefix. Files of different lengths
  are a ValueError naming both, once the shorter one ends."""
  chunks = read_chunks(stream, buffer_size, name)
  prefix_chunks = read_chunks(prefixes, buffer_size, prefix_name)
  for (first_line, texts), prefix in itertools.zip_longest(chunks, prefix_chunks,
                                                           fillvalue=(0, None)):
    if texts is None or prefix[1] is None or len(texts) != len(prefix[1]):
      raise ValueError(f"{name} and {prefix_name} differ in length (from line"
                       f" {first_line or prefix[0]} on): give one prefix line (empty:"
                       " none) per input line.")
    yield first_line, texts, [p or None for p in prefix[1]]
