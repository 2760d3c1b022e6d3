"""The entry points' shared conventions: quiet library logs, whole log lines beside a
progress bar (cli/logs.py), and configs found from any directory (cli/training_flags.py).
"""
import logging
import os
import subprocess
import sys

from cli import logs
from tests.conftest import REPO

_LIBRARY = str(REPO / ".venv/lib/python3.11/site-packages/orbax/checkpoint/x.py")
_OURS = str(REPO / "training/trainer.py")


def _record(pathname: str, level: int, msg: str = "m") -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, (), None)


def test_library_records_pass_from_their_level_ours_always():
  quiet, loud = logs.ThirdPartyFilter(logging.WARNING), logs.ThirdPartyFilter(
      logging.INFO)
  assert not quiet.filter(_record(_LIBRARY, logging.INFO))
  assert quiet.filter(_record(_LIBRARY, logging.WARNING))
  assert loud.filter(_record(_LIBRARY, logging.INFO))
  assert quiet.filter(_record(_OURS, logging.INFO))
  assert quiet.filter(_record(_OURS, logging.DEBUG))
  expected = "CheckpointManagerOptions.read_only=True, setting create=False."
  assert not quiet.filter(_record(_LIBRARY, logging.WARNING, expected))
  assert loud.filter(_record(_LIBRARY, logging.WARNING, expected))
  access = _record(_LIBRARY, logging.INFO)  # aiohttp writes the server's access log.
  access.name = "nmt.access"
  assert quiet.filter(access)


_SCRIPT = """
import sys
from absl import logging
import tqdm
from cli import logs

def main(argv):
  bar = tqdm.tqdm(total=4, file=sys.stderr)
  for i in range(4):
    bar.update(1)
    logging.warning("warning %d", i)
    logging.info("library info %d", i)  # This file is not the project's.
  bar.close()

logs.run(main)
"""


def _run(*flags: str) -> str:
  return subprocess.run([sys.executable, "-c", _SCRIPT, *flags], cwd=REPO, check=True,
                        stderr=subprocess.PIPE, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)}).stderr


def test_log_lines_never_share_a_line_with_a_progress_bar_and_the_flag_raises_them():
  quiet = _run()
  assert "library info" not in quiet
  logged = [line for line in quiet.split("\n") if "warning " in line]
  assert len(logged) == 4, quiet
  for line in logged:  # What a terminal shows: the text after the last \r.
    assert line.rsplit("\r", 1)[-1].startswith("W"), repr(line)
  assert "%|" in quiet  # The bar was drawn.
  assert _run("--third_party_log_level=info").count("library info") == 4


def test_the_default_config_is_found_from_any_directory(tmp_path):
  script = ("from absl import flags; from cli import training_flags;"
            " flags.FLAGS(['train.py', '--workdir=w']);"
            " print(training_flags.CONFIG.value.num_train_steps)")
  out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  from configs import default  # pylint: disable=import-outside-toplevel
  assert out.stdout.strip() == str(default.get_config().num_train_steps), out.stderr
