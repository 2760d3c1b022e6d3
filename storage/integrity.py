"""Checksum manifests: a SHA256SUMS file in every checkpoint, average and export.

`write_manifest` lists the sha256 of every file under a directory, in the format of
`sha256sum` (`sha256sum -c SHA256SUMS` checks it by hand), once the files are on disk
(each is fsynced as it is hashed). `verify` recomputes them on read: a file changed
after it was written (flipped bits, a truncated copy, an edit) fails loudly, named,
instead of restoring as wrong weights. `non_finite` names parameters holding NaN or
infinity, which a restore must not hand on either.
"""
import hashlib
import os

from etils import epath
import jax
import jax.numpy as jnp

from storage import files

MANIFEST = "SHA256SUMS"
_CHUNK = 1 << 22


class IntegrityError(RuntimeError):
  """Files under a directory differ from its manifest: they changed after writing."""


def _relative_files(directory: epath.Path) -> list[str]:
  """Every file below `directory` but the manifest, as sorted relative paths."""
  names, todo = [], [""]
  while todo:  # epath has no recursive glob for buckets: walk with iterdir.
    relative = todo.pop()
    for child in (directory / relative if relative else directory).iterdir():
      name = f"{relative}/{child.name}" if relative else child.name
      if child.is_dir():
        todo.append(name)
      else:
        names.append(name)
  return sorted(n for n in names if n != MANIFEST)


def sha256(path: epath.Path, sync: bool = False) -> str:
  """The file's sha256; `sync`: fsync it too (local files), so it is durable."""
  digest = hashlib.sha256()
  if files.is_remote(path):
    digest.update(path.read_bytes())
    return digest.hexdigest()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
    if sync:
      os.fsync(f.fileno())
  return digest.hexdigest()


def write_manifest(directory) -> epath.Path:
  """Writes DIRECTORY/SHA256SUMS for every file below it, after syncing them."""
  directory = epath.Path(directory)
  lines = [f"{sha256(directory / name, sync=True)}  {name}\n"
           for name in _relative_files(directory)]
  if not files.is_remote(directory):
    for sub in {os.path.dirname(os.path.join(directory, n)) for n in
                _relative_files(directory)}:
      files.fsync_dir(sub)
  path = directory / MANIFEST
  files.atomic_write(path, "".join(lines))
  return path


def read_manifest(directory) -> dict[str, str] | None:
  """{relative path: sha256} of DIRECTORY/SHA256SUMS; None if it has none."""
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    return None
  entries = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    digest, sep, name = line.partition("  ")
    if not sep or len(digest) != 64:
      raise IntegrityError(f"{path}:{number} is not a `sha256sum` line ({line!r}):"
                           " the manifest itself is damaged.")
    entries[name] = digest
  return entries


def verify(directory, under: str = "") -> bool:
  """Checks the files listed in DIRECTORY/SHA256SUMS (those below `under`, if given).

  Returns False if there is no manifest (written before manifests existed, or by a
  writer killed just before it), True if every file matches; raises IntegrityError
  naming each missing or changed file otherwise.
  """
  directory = epath.Path(directory)
  entries = read_manifest(directory)
  if entries is None:
    return False
  prefix = f"{under.rstrip('/')}/" if under else ""
  problems = []
  for name, digest in entries.items():
    if not name.startswith(prefix):
      continue
    path = directory / name
    if not path.exists():
      problems.append(f"{path}: missing")
    elif sha256(path) != digest:
      problems.append(f"{path}: sha256 {sha256(path)[:12]}..., the manifest says"
                      f" {digest[:12]}...")
  if problems:
    raise IntegrityError(
        f"{len(problems)} file(s) under {directory} changed after they were written"
        f" (checked against {directory / MANIFEST}):\n  " + "\n  ".join(problems[:8]))
  return True


def non_finite(tree) -> list[str]:
  """Paths of the floating-point leaves of `tree` that hold a NaN or an infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.isfinite(leaf).all()):
      bad.append(jax.tree_util.keystr(path))
  return bad
