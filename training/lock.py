"""One training per workdir: WORKDIR/train.lock names the process of the run.

Two runs on one workdir would interleave checkpoints and delete each other's. The lock
is created atomically (a hard link, which fails if the file exists) and records the
PID, host, the kernel's boot id (/proc/sys/kernel/random/boot_id) and the process's
start time (field 22 of /proc/PID/stat). On the same host a lock is stale, and taken
over, when its process is gone, when the machine rebooted since (another boot id),
when its PID now belongs to another process (another start time: PIDs are reused,
e.g. by a restarted container, which also keeps its host name) or when the PID is the
caller's own but the start time is not (a container restart reuses PIDs). A file
that is not such a record (cut short, edited) is stale too, with a warning. Process
0 owns the lock of a multi-process run; the others learn whether it got it.

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


def boot_id() -> str | None:
  """This boot of the kernel (Linux); None where /proc does not say."""
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return None


def start_time(pid: int) -> int | None:
  """When process `pid` started, in clock ticks since boot (Linux); None if unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may hold spaces: split after it.
  fields = stat[stat.rfind(")") + 2:].split()
  return int(fields[19])  # Field 22 overall: the 20th after the name.


def _holder(path: epath.Path) -> dict | None:
  """The lock's record; None if there is none (or it vanished)."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except ValueError:
    return {}  # Not JSON: malformed.


def _malformed(holder) -> bool:
  return not (isinstance(holder, dict) and isinstance(holder.get("pid"), int)
              and isinstance(holder.get("host"), str))


def _stale_because(holder) -> str | None:
  """Why the lock `holder` is held by no live run, or None if it may be."""
  if holder is None:
    return "it vanished"
  if _malformed(holder):
    return "it is not a lock record (no integer pid and host name)"
  if holder["host"] != socket.gethostname():
    return None  # Another machine: this one cannot tell.
  pid, recorded_boot = holder["pid"], holder.get("boot_id")
  if recorded_boot and boot_id() and recorded_boot != boot_id():
    return "the machine rebooted since it was taken"
  if not files.pid_alive(pid):
    return f"PID {pid} is not running"
  recorded, now = holder.get("start_time"), start_time(pid)
  if recorded is not None and now is not None and recorded != now:
    return f"PID {pid} is another process now (started at another time)"
  if pid == os.getpid() and recorded is None:
    return f"PID {pid} is this process, which did not take it (a restart)"
  return None


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
        "boot_id": boot_id(), "start_time": start_time(os.getpid()),
        "started": datetime.datetime.now().isoformat(timespec="seconds")}
  for _ in range(3):  # A stale lock is removed, then taken (unless a rival was faster).
    if _create(path, json.dumps(me)):
      return path
    holder = _holder(path)
    reason = _stale_because(holder)
    if reason is None:
      this = " (this very process: it already holds it)" if (
          holder["pid"], holder.get("start_time")) == (me["pid"], me["start_time"]
                                                        ) else ""
      raise WorkdirLockedError(
          f"{workdir} is being trained by PID {holder['pid']} on host"
          f" {holder['host']}{this} (since {holder.get('started')}; lock file"
          f" {path}). Wait for that run to end or stop it, or train in another"
          f" --workdir. If that run is dead on another host, delete {path}.")
    if holder is not None:
      logging.warning("Removing the stale lock %s (%s): %r", path, reason, holder)
    path.unlink(missing_ok=True)
  raise WorkdirLockedError(f"Could not lock {workdir}: {path} keeps reappearing.")


def release(path: epath.Path) -> None:
  """Deletes the lock if it is still this process's."""
  holder = _holder(path)
  if not _malformed(holder) and (holder["pid"], holder["host"],
                                 holder.get("start_time")) == (
      os.getpid(), socket.gethostname(), start_time(os.getpid())):
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
