"""File primitives every writer uses: remote paths, whole-or-nothing writes of files
and of directories.

Outputs behave like a shell redirect that cannot be seen half-written: a regular (or
missing) target is written to a temporary file beside it and renamed over it, keeping
the old file's mode; a FIFO, device or socket is written directly (a rename would
replace it by a regular file); a symlink is followed and its target written the same
way, so the link stays. A directory is built beside the old one and swapped in with
one `renameat2(RENAME_EXCHANGE)` (`replace_dir`).
"""
from collections.abc import Iterator
import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from typing import BinaryIO

from etils import epath


def is_remote(path) -> bool:
  """A URL such as gs://bucket/dir (read and written through etils.epath and fsspec:
  `pip install .[gcs]`), not a local path."""
  return "://" in os.fspath(path)


def absolute(path) -> epath.Path:
  """A local path made absolute (orbax rejects relative ones); gs:// paths as they are."""
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def fsync_dir(directory) -> None:
  """Makes a rename or a new file in local `directory` durable (a no-op elsewhere)."""
  try:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # Some filesystems cannot sync a directory; nothing more to do.
    pass
  finally:
    os.close(fd)


def is_special(path) -> bool:
  """A FIFO, character or block device or socket: written in place, never renamed."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    return False
  return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _new_file_mode(existing: str) -> int:
  """The mode a replaced file keeps, or that of a new file under the umask."""
  try:
    return stat.S_IMODE(os.stat(existing).st_mode)
  except FileNotFoundError:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def open_replacing(path) -> Iterator[BinaryIO]:
  """A binary stream whose bytes become local `path` whole, once the body succeeds.

  Regular or missing targets (a symlink's target for a symlink): a temporary file
  beside the target, fsynced and renamed over it, the old file's mode kept; a failed
  body leaves the old file as it was. FIFOs and devices are opened and written as
  they are (as `>` would), since a rename would replace them.
  """
  target = os.path.realpath(path)  # A symlink: its target; the link stays.
  if is_special(target):
    with open(target, "wb") as f:
      yield f
    return
  directory, base = os.path.split(target)
  fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
  try:
    os.fchmod(fd, _new_file_mode(target))  # mkstemp gives 0o600.
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, target)
    fsync_dir(directory)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temp)
    raise


def atomic_write(path, data: bytes | str) -> None:
  """Writes `path` whole or not at all (`open_replacing`); on disk when it returns.

  A reader (or a crash) never sees half a file. gs:// objects are written whole by
  the store itself.
  """
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  with open_replacing(path) as f:
    f.write(data)


def _exchange(a: str, b: str) -> bool:
  """Swaps two local paths in one atomic step; False where the system cannot."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE.
  if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
    return False
  raise OSError(code, os.strerror(code), b)


def staging_dir(target) -> str:
  """A new empty directory beside local `target` to build its next version in.

  Named `.<name>.tmp-<pid>`; those of processes that are gone (a killed writer) are
  deleted first.
  """
  target = os.path.abspath(os.fspath(target))
  parent, name = os.path.split(target)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{name}.tmp-"
  for entry in os.listdir(parent):
    pid = entry[len(prefix):]
    if entry.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid)):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
  staging = os.path.join(parent, f"{prefix}{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  os.mkdir(staging)
  return staging


def pid_alive(pid: int) -> bool:
  """Whether a process `pid` exists on this host (owned by anyone)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by someone else.
    return True
  return True


def replace_dir(staging: str, target) -> None:
  """Puts the finished directory `staging` at `target`, replacing any old one.

  One atomic exchange where the filesystem has it (Linux renameat2: ext4, xfs,
  btrfs, tmpfs), so a reader or a kill -9 at any moment finds the old directory or
  the new one, complete; the old one is then deleted. Elsewhere the old directory is
  renamed to `.<name>.old` first: a kill between the two renames leaves it there,
  and `recover_dir` (called by the next writer) puts it back.
  """
  target = os.path.abspath(os.fspath(target))
  parent = os.path.dirname(target)
  fsync_dir(staging)
  if not os.path.lexists(target):
    os.rename(staging, target)
  elif _exchange(staging, target):
    shutil.rmtree(staging)
  else:
    old = _old_dir(target)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)
  fsync_dir(parent)


def _old_dir(target: str) -> str:
  parent, name = os.path.split(target)
  return os.path.join(parent, f".{name}.old")


def recover_dir(target) -> None:
  """Puts back the old `target` that a writer killed inside `replace_dir` left aside."""
  target = os.path.abspath(os.fspath(target))
  old = _old_dir(target)
  if not os.path.lexists(target) and os.path.isdir(old):
    os.rename(old, target)
