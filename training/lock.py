"""One training per workdir: WORKDIR/train.lock holds the PID and host of the run.

Two runs on one workdir would interleave checkpoints and delete each other's. The lock
is created atomically (a hard link, which fails if the file exists); a lock whose PID
is not alive on this host is stale (a killed run) and taken over. Process 0 owns the
lock of a multi-process run; the others learn whether it got it.

On a bucket (gs:// workdir) the lock is best effort: object stores have no
create-if-absent here, so two runs started within moments of each other could both
take it (the check and the write are separate requests), and a lock left by a run
that died on another host is never stale: delete it by hand, as the error says.
"""
import contextlib
import datetime
import json
import os
import socket

from absl import logging
from etils import epath

from parallel import processes
from storage import files

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
  """Another training run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by someone else.
    return True
  return True


def _holder(path: epath.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, ValueError):
    return None


def _is_stale(holder: dict | None) -> bool:
  """A lock whose process is gone from this host (or that nobody can read)."""
  if holder is None:
    return True
  return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])


def _create(path: epath.Path, content: str) -> bool:
  """Creates `path` holding `content` unless it exists; True if this call made it."""
  if files.is_remote(path):  # No atomic create on a bucket: best effort.
    if path.exists():
      return False
    path.write_text(content)
    return True
  tmp = path.with_name(f".{path.name}.{os.getpid()}")
  tmp.write_text(content)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    tmp.unlink()


def acquire(workdir) -> epath.Path:
  """Locks `workdir` for this process; WorkdirLockedError if a live run holds it."""
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds")}
  for _ in range(3):  # A stale lock is removed, then taken (unless a rival was faster).
    if _create(path, json.dumps(me)):
      return path
    holder = _holder(path)
    if not _is_stale(holder):
      raise WorkdirLockedError(
          f"{workdir} is being trained by PID {holder['pid']} on host"
          f" {holder['host']} (since {holder.get('started')}; lock file {path})."
          " Wait for that run to end or stop it, or train in another --workdir. If"
          f" that run is dead on another host, delete {path}.")
    logging.warning("Removing the stale lock %s of a run that is gone: %s", path, holder)
    path.unlink(missing_ok=True)
  raise WorkdirLockedError(f"Could not lock {workdir}: {path} keeps reappearing.")


def release(path: epath.Path) -> None:
  """Deletes the lock if it is still this process's."""
  holder = _holder(path)
  if holder and (holder.get("pid"), holder.get("host")) == (
      os.getpid(), socket.gethostname()):
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds the workdir's lock (process 0) for the body; every process stops if taken."""
  acquired = []
  processes.on_process_0(lambda: acquired.append(acquire(workdir)),
                         f"lock {workdir}", error=WorkdirLockedError)
  try:
    yield
  finally:
    for path in acquired:
      release(path)
