"""File primitives every writer uses: remote paths and whole-or-nothing writes."""
import os

from etils import epath


def is_remote(path) -> bool:
  """A URL such as gs://bucket/dir (read and written through etils.epath and fsspec:
  `pip install .[gcs]`), not a local path."""
  return "://" in os.fspath(path)


def absolute(path) -> epath.Path:
  """A local path made absolute (orbax rejects relative ones); gs:// paths as they are."""
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


def atomic_write(path, data: bytes | str) -> None:
  """Writes `path` whole or not at all: a temporary file, then a rename.

  A reader (or a crash) never sees half a file. gs:// objects are written whole by
  the store itself.
  """
  path = epath.Path(path)
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_bytes(data)
  os.replace(tmp, path)
