"""Readable logs for every entry point: quiet libraries, progress bars kept whole.

Libraries log through the same absl handler as our code (orbax, grain and TFDS call
absl's `logging`; JAX and aiohttp use Python loggers that propagate to it), so a
logger's name cannot tell them apart. A filter on the handlers does: a record from a
file outside this project passes only at `--third_party_log_level` (WARNING unless
raised) or above; ours pass at absl's own `--verbosity`. Log lines are written through
`tqdm.write`, which lifts a progress bar off the terminal line, writes, and redraws
it, so a bar and a log line never share a line.

  from cli import logs
  ...
  if __name__ == "__main__":
    logs.run(main)  # Instead of absl's app.run(main).
"""
from collections.abc import Callable
import logging as py_logging
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import tqdm

_PROJECT = str(pathlib.Path(__file__).resolve().parents[1])
_SITE_PACKAGES = ("site-packages", "dist-packages")
_LEVELS = {"debug": py_logging.DEBUG, "info": py_logging.INFO,
           "warning": py_logging.WARNING, "error": py_logging.ERROR}

# Library warnings about what we do on purpose, shown only from --third_party_log_level
# info down: orbax warns on every read-only CheckpointManager (how inference restores).
EXPECTED_WARNINGS = ("CheckpointManagerOptions.read_only=True",
                     "Given directory is read only")

THIRD_PARTY_LOG_LEVEL = flags.DEFINE_enum(
    "third_party_log_level", "warning", list(_LEVELS),
    "Least level logged from libraries (orbax, JAX, grain, TFDS, aiohttp); ours"
    " follow --verbosity. 'info' shows e.g. orbax's per-save lines.")


# Loggers of ours that libraries write to (the server's access log, written by aiohttp).
OUR_LOGGERS = "nmt"


def is_ours(record: py_logging.LogRecord) -> bool:
  """Whether a log record comes from this project: its source file or its logger."""
  if record.name == OUR_LOGGERS or record.name.startswith(OUR_LOGGERS + "."):
    return True
  return record.pathname.startswith(_PROJECT) and not any(
      part in record.pathname for part in _SITE_PACKAGES)


class ThirdPartyFilter(py_logging.Filter):
  """Passes our records, and library records at `level` or above."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: py_logging.LogRecord) -> bool:
    if is_ours(record):
      return True
    level = record.levelno
    if level == py_logging.WARNING and str(record.msg).startswith(EXPECTED_WARNINGS):
      level = py_logging.INFO
    return level >= self.level


class _TqdmStream:
  """A text stream that writes whole lines through tqdm (bars redrawn after)."""

  def write(self, text: str) -> int:
    tqdm.tqdm.write(text, file=sys.stderr, end="")
    return len(text)

  def flush(self) -> None:
    sys.stderr.flush()

  def close(self) -> None:  # sys.stderr stays open.
    pass


def setup(level: str | None = None) -> None:
  """Installs the filter and the tqdm-safe stream; `level` defaults to the flag's."""
  level = _LEVELS[level or THIRD_PARTY_LOG_LEVEL.value]
  absl_handler = logging.get_absl_handler()  # It hands records to its python_handler.
  handlers = {absl_handler.python_handler, *py_logging.getLogger().handlers}
  for handler in handlers:
    for old in [f for f in handler.filters if isinstance(f, ThirdPartyFilter)]:
      handler.removeFilter(old)
    handler.addFilter(ThirdPartyFilter(level))
  if absl_handler.python_handler.stream is sys.stderr:
    absl_handler.python_handler.stream = _TqdmStream()


def run(main: Callable[[list[str]], object]) -> None:
  """absl's `app.run(main)`, with `setup()` once the flags are parsed."""
  def main_with_logs(argv):
    setup()
    return main(argv)
  app.run(main_with_logs)
