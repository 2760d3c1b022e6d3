"""Text files in and out, one sentence a line, and the hygiene of those lines.

Every input line gives exactly one output line: invalid UTF-8 is replaced (with a
warning naming the line), a line of only whitespace, BOM or zero-width characters is
empty (`clean`), and no output holds a newline, carriage return or tab (`one_line`).
Output is UTF-8 whatever the locale's encoding, and an output file appears only once
it is complete (`open_output`). "-" is stdin or stdout.
"""
from collections.abc import Iterator
import contextlib
import io
import itertools
import os
import re
import sys
import tempfile
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


def check_output_path(path: str) -> None:
  """Raises ValueError naming `path` if an output file cannot be written there.

  Called before the model loads, so a typo fails in a second, not after restoring
  and translating. "-" (stdout) and remote paths (scheme://) are not checked.
  """
  if path == STDIO or files.is_remote(path):
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


@contextlib.contextmanager
def open_output(path: str) -> Iterator[BinaryIO]:
  """A binary stream for the output: stdout, or a temporary file renamed to `path`.

  The rename happens only once every line is written, so a failed run leaves no
  partial file (and an older output stays as it was). Remote paths are written at
  the end in one piece.
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
  directory, base = os.path.split(os.path.abspath(path))
  fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # As an ordinary new file; mkstemp gives 0o600.
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temp)
    raise


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
