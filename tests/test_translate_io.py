"""Reliability of the test setup and of infer.py's text in/out: a private JAX cache,
one output line per input line, invisible-only lines, UTF-8 stdout, early output-path
checks and capped batch rows."""
import os
import stat
import tempfile

from tests import conftest


def test_jax_cache_dir_is_private_to_the_user():
  path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  info = os.lstat(path)
  assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
  assert not info.st_mode & 0o077, oct(info.st_mode)
  assert os.path.dirname(os.path.abspath(path)) != tempfile.gettempdir()


def test_shared_or_foreign_cache_dir_is_not_used(tmp_path):
  fresh = tmp_path / "a" / "cache"
  assert conftest.private_cache_dir(str(fresh)) == str(fresh)
  assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
  shared = tmp_path / "shared"
  shared.mkdir()
  shared.chmod(0o777)  # World-writable: anyone could plant compiled programs.
  assert conftest.private_cache_dir(str(shared)) is None
  link = tmp_path / "link"
  link.symlink_to(fresh)
  assert conftest.private_cache_dir(str(link)) is None
  not_dir = tmp_path / "file"
  not_dir.write_text("")
  assert conftest.private_cache_dir(str(not_dir)) is None
