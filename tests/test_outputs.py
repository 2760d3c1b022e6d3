"""Outputs behave like a shell redirect that is never seen half-written: FIFOs and
devices written in place, symlinks written through, modes kept, the input never
overwritten; bad --input/--output refused before the model loads."""
import contextlib
import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import types

from etils import epath
import pytest

from inference import evaluate

from inference import text_io
from storage import files
from tests.conftest import REPO


def _write(path, data: bytes) -> None:
  with text_io.open_output(str(path)) as out:
    out.write(data)


def test_a_fifo_output_is_written_not_replaced(tmp_path):
  fifo = tmp_path / "pipe"
  os.mkfifo(fifo)
  received = []
  reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
  reader.start()
  _write(fifo, b"un chien\n")
  reader.join(timeout=30)
  assert received == [b"un chien\n"]
  assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
  assert files.is_special("/dev/null") and not files.is_special(tmp_path)


def test_a_symlink_output_writes_its_target_and_stays_a_link(tmp_path):
  target = tmp_path / "real.fr"
  target.write_text("old\n")
  link = tmp_path / "link.fr"
  link.symlink_to(target)
  _write(link, b"new\n")
  assert link.is_symlink() and os.readlink(link) == str(target)
  assert target.read_text() == "new\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link.fr", "real.fr"]


def test_an_existing_output_keeps_its_mode(tmp_path):
  output = tmp_path / "private.fr"
  output.write_text("old\n")
  output.chmod(0o600)
  _write(output, b"new\n")
  assert stat.S_IMODE(output.stat().st_mode) == 0o600
  assert output.read_text() == "new\n"
  files.atomic_write(output, "again\n")
  assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_directories_and_trailing_slashes_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"--output=.*newdir/ is a directory"):
    text_io.check_output_path(f"{tmp_path}/newdir/")
  with pytest.raises(ValueError, match=rf"--output={tmp_path} is a directory"):
    text_io.check_output_path(str(tmp_path))


def test_the_input_file_is_never_the_output(tmp_path):
  source = tmp_path / "in.en"
  source.write_text("A dog.\n")
  (tmp_path / "alias.en").symlink_to(source)
  os.link(source, tmp_path / "hard.en")
  for output in ("in.en", "alias.en", "hard.en", "./in.en"):
    with pytest.raises(ValueError, match="is the input file"):
      text_io.check_output_path(str(tmp_path / output), inputs=(str(source),))
  text_io.check_output_path(str(tmp_path / "out.fr"), inputs=(str(source),))


def test_a_missing_or_directory_input_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"--input=.*nothing\.en: no such file"):
    text_io.check_input_path(str(tmp_path / "nothing.en"))
  with pytest.raises(ValueError, match=r"--target=.* is a directory"):
    text_io.check_input_path(str(tmp_path), "--target")
  text_io.check_input_path("-")


def _infer(*args):
  return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=REPO,
                        capture_output=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.slow  # Two infer.py processes.
def test_bad_paths_are_flag_errors_before_the_model_loads(tmp_path):
  no_run = f"--workdir={tmp_path / 'no_run'}"  # Loading a model would fail on it.
  result = _infer("--mode=translate", no_run, f"--input={tmp_path / 'missing.en'}")
  stderr = result.stderr.decode()
  assert result.returncode != 0 and "--input=" in stderr and "no such file" in stderr
  assert "Traceback" not in stderr and "not a training workdir" not in stderr
  source = tmp_path / "in.en"
  source.write_text("A dog.\n")
  result = _infer("--mode=score", no_run, f"--input={source}", f"--output={source}")
  assert result.returncode != 0 and "is the input file" in result.stderr.decode()
  assert source.read_text() == "A dog.\n"


def test_a_full_disk_keeps_the_old_output_and_leaves_no_temporary_file(tmp_path):
  output = tmp_path / "out.fr"
  output.write_text("old\n")
  with pytest.raises(OSError) as failure:
    with text_io.open_output(str(output)) as out:
      out.write(b"new\n")
      raise OSError(errno.ENOSPC, "No space left on device")  # As write() would.
  assert failure.value.errno == errno.ENOSPC
  assert output.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.fr"]


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Writes past `limit` bytes fail with EFBIG, as on a full disk (RLIMIT_FSIZE)."""
  old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


class _FixedTranslator:
  """Returns the same long hypothesis for every source; step 7."""
  step = 7

  def translate(self, sources, **unused):
    del unused
    line = "une phrase assez longue " * 40
    return [types.SimpleNamespace(text=line, line=lambda nbest, l=line: l)
            for _ in sources]


def test_evaluate_keeps_the_old_hypotheses_when_the_disk_fills(tmp_path):
  hypotheses = tmp_path / "hypotheses" / "val.txt"
  hypotheses.parent.mkdir()
  hypotheses.write_text("old\n")
  with _file_size_limit(4096), pytest.raises(OSError) as failure:
    evaluate.evaluate(_FixedTranslator(), "val", ["a dog"] * 20, ["un chien"] * 20,
                      epath.Path(hypotheses))
  assert failure.value.errno == errno.EFBIG
  assert hypotheses.read_text() == "old\n"
  assert os.listdir(hypotheses.parent) == ["val.txt"]
