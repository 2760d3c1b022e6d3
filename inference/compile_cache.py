"""JAX's persistent compilation cache in a private per-user directory.

Compiling the beam search takes seconds per input shape (minutes for a server's every
bucket); with the cache a second `infer.py` run, or a restarted server, loads the
programs from disk instead. JAX runs whatever compiled programs it finds there, so the
directory must be writable by this user alone: a shared path in /tmp would let another
user plant code.
"""
import os
import stat

from absl import logging
# No jax import at module level: tests/conftest.py uses `private_dir` to set JAX's
# cache variables before jax is first imported (it reads them then).


def default_dir(name: str = "jax") -> str:
  """$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME (or ~/.cache)/nmt-enfr/NAME."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".cache")
  return os.path.join(base, "nmt-enfr", name)


def private_dir(path: str) -> str | None:
  """`path`, created with mode 0o700 if missing, or None (with a warning) if unsafe.

  Unsafe: not a directory (a symlink included), owned by another user, or writable by
  group or others.
  """
  try:
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
  except OSError as e:
    logging.warning("Cannot create the compilation cache %s (%s); compiling without"
                    " it. Give --compilation_cache_dir a writable directory.", path, e)
    return None
  if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
      or info.st_mode & 0o022):
    logging.warning("Compilation cache %s is not a directory owned by uid %d and"
                    " writable only by it (mode %o, owner %d); compiling without it."
                    " Fix: chmod 700 it if it is yours, or give another"
                    " --compilation_cache_dir.", path, os.getuid(),
                    stat.S_IMODE(info.st_mode), info.st_uid)
    return None
  return path


def enable(path: str | None) -> str | None:
  """Turns the cache on in `path` (None: `default_dir()`; "": off); returns the dir used.

  Call it before the first compilation. Every program is cached, however quickly it
  compiled (the default skips those under a second, e.g. a small model's shapes).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if path == "":
    return None
  path = private_dir(os.path.expanduser(default_dir() if path is None else path))
  if path is not None:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path
