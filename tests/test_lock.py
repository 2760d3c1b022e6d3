"""The workdir lock recovers from what a killed run leaves: a container restart (same
PID, same host name), a reboot, a reused PID, a malformed file; a live run keeps it."""
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from training import lock


def _write_lock(workdir, **record):
  (workdir / lock.LOCK_FILE).write_text(json.dumps(
      {"host": socket.gethostname(), **record}))


def _taken_over(workdir) -> bool:
  path = lock.acquire(workdir)
  holder = json.loads(path.read_text())
  lock.release(path)
  return holder["pid"] == os.getpid() and not path.exists()


@pytest.fixture
def sleeper():
  """A live process that is not this one."""
  process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield process.pid
  process.kill()
  process.wait()


def test_the_lock_records_boot_and_start_time(tmp_path):
  path = lock.acquire(tmp_path)
  holder = json.loads(path.read_text())
  lock.release(path)
  assert holder["boot_id"] == lock.boot_id()
  assert holder["start_time"] == lock.start_time(os.getpid()) is not None


def test_container_restart_with_the_same_pid_and_host_takes_the_lock(tmp_path):
  # The killed run had our PID in the container before it restarted.
  _write_lock(tmp_path, pid=os.getpid(), boot_id=lock.boot_id(),
              start_time=lock.start_time(os.getpid()) - 100)
  assert _taken_over(tmp_path)
  _write_lock(tmp_path, pid=os.getpid())  # A lock from before start times.
  assert _taken_over(tmp_path)


def test_a_lock_from_before_a_reboot_is_stale(tmp_path, sleeper):
  _write_lock(tmp_path, pid=sleeper, boot_id="0" * 8 + "-old-boot",
              start_time=lock.start_time(sleeper))
  assert _taken_over(tmp_path)


def test_a_reused_pid_of_another_process_is_stale(tmp_path, sleeper):
  _write_lock(tmp_path, pid=sleeper, boot_id=lock.boot_id(),
              start_time=lock.start_time(sleeper) + 1)
  assert _taken_over(tmp_path)


def test_a_live_holder_keeps_the_lock(tmp_path, sleeper):
  _write_lock(tmp_path, pid=sleeper, boot_id=lock.boot_id(),
              start_time=lock.start_time(sleeper))
  with pytest.raises(lock.WorkdirLockedError, match=f"PID {sleeper} on host"):
    lock.acquire(tmp_path)
  path = lock.acquire(tmp_path / "other")
  with pytest.raises(lock.WorkdirLockedError, match="this very process"):
    lock.acquire(tmp_path / "other")
  lock.release(path)


@pytest.mark.parametrize("content", [
    "[1, 2]", json.dumps({"host": "h"}), json.dumps({"pid": "12", "host": "h"}),
    "{not json", ""])
def test_a_malformed_lock_is_taken_over_with_a_warning(tmp_path, caplog, content):
  (tmp_path / lock.LOCK_FILE).write_text(content)
  with caplog.at_level(logging.WARNING):
    assert _taken_over(tmp_path)
  assert "not a lock record" in caplog.text
