"""The artifact kinds of bench/on_device.py: how each is exported, run and sized.

A kind is an export (`export.py` flags; none for the training workdir itself) and a
runtime. A runtime has a runner command, stdin to stdout as a user runs it
(`infer.py --mode=translate`, `runners/X.py MODEL_DIR`, or this benchmark's
CTranslate2 loop), a spec for the in-process driver of bench/on_device_child.py,
and the Python modules it imports, from which `runtime_bytes` finds the pip
distributions it needs. Sizes are apparent sizes (`du -b`); installed sizes come
from the distributions' RECORD files. Imports no JAX.
"""
import ast
from collections.abc import Iterable
import dataclasses
import importlib.metadata as metadata
import importlib.util
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Runtime:
  name: str
  runner_file: str | None  # runners/NAME.py, relative to the repository; None: ours.
  modules: tuple[str, ...]  # Imported besides the runner file's own imports.
  # Needed at run time without being a declared requirement of the modules' packages.
  extra_distributions: tuple[str, ...] = ()


RUNTIMES = {
    "ours": Runtime("ours", None, ()),
    # jax.export deserializes with flatbuffers, which jax does not require.
    "stablehlo": Runtime("stablehlo", "runners/stablehlo.py", (), ("flatbuffers",)),
    "onnx": Runtime("onnx", "runners/onnx.py", ()),
    # bench/real_text_engines.CTranslate2: ctranslate2 and sentencepiece.
    "ctranslate2": Runtime("ctranslate2", None, ("ctranslate2", "sentencepiece")),
}


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str  # e.g. bundle/int8
  runtime: str  # A key of RUNTIMES.
  export_flags: tuple[str, ...] | None  # export.py flags; None: the workdir itself.

  @property
  def directory(self) -> str:
    """Its folder in the output directory."""
    return self.name.replace("/", "-")

  @property
  def precision(self) -> str:
    return self.name.split("/")[1] if "/" in self.name else "float32"


KINDS = (
    Kind("workdir", "ours", None),
    Kind("bundle/float32", "ours", ("--format=bundle",)),
    Kind("bundle/int8", "ours", ("--format=bundle", "--quantize=int8")),
    Kind("stablehlo/float32", "stablehlo", ("--format=stablehlo",)),
    Kind("onnx/float32", "onnx", ("--format=onnx",)),
    Kind("onnx/int8", "onnx", ("--format=onnx", "--quantize=int8")),
    Kind("ctranslate2/float32", "ctranslate2", ("--format=ctranslate2",)),
    Kind("ctranslate2/int8", "ctranslate2",
         ("--format=ctranslate2", "--quantization=int8")),
)
KIND_NAMES = tuple(k.name for k in KINDS)


def tree_bytes(path: str) -> int:
  """What `du -b PATH` prints: apparent sizes of the files and folders, hard links
  once, symbolic links as links."""
  seen, total = set(), 0
  for p in [path, *(os.path.join(root, n) for root, dirs, names in os.walk(path)
                    for n in dirs + names)]:
    info = os.lstat(p)
    if (info.st_dev, info.st_ino) not in seen:
      seen.add((info.st_dev, info.st_ino))
      total += info.st_size
  return total


def imported_modules(path: str) -> set[str]:
  """The top-level modules a Python file imports (absolute imports, any depth)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
      names.add(node.module.split(".")[0])
  return names - set(sys.stdlib_module_names)


def runtime_modules(runtime: Runtime) -> set[str]:
  modules = set(runtime.modules)
  if runtime.runner_file:
    modules |= imported_modules(os.path.join(REPO, runtime.runner_file))
  return modules


def missing(runtime: Runtime) -> str | None:
  """Why the runtime cannot run here (no runner file, a module not installed), or
  None."""
  if runtime.runner_file and not os.path.exists(os.path.join(REPO,
                                                             runtime.runner_file)):
    return f"{runtime.runner_file} does not exist"
  absent = sorted(m for m in runtime_modules(runtime)
                  if importlib.util.find_spec(m) is None)
  return f"{', '.join(absent)} not installed" if absent else None


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(name: str) -> metadata.Distribution | None:
  try:
    return metadata.distribution(name)
  except metadata.PackageNotFoundError:
    return None


def requirement_closure(roots: Iterable[str]) -> dict[str, metadata.Distribution]:
  """{name: distribution} of `roots` and everything they require, transitively
  (requirements of extras and of other platforms left out; absent ones skipped)."""
  # pylint: disable-next=import-outside-toplevel
  from packaging.requirements import Requirement
  found, todo = {}, list(roots)
  while todo:
    name = _canonical(todo.pop())
    if name in found or (dist := _distribution(name)) is None:
      continue
    found[name] = dist
    for line in dist.requires or []:
      requirement = Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(requirement.name)
  return found


def installed_bytes(dist: metadata.Distribution) -> int:
  """The sizes its RECORD lists; files it lists without one (RECORD, bytecode) are
  stat'ed, files since deleted skipped."""
  total = 0
  for f in dist.files or []:
    if f.size is not None:
      total += f.size
    elif os.path.isfile(path := f.locate()):
      total += os.path.getsize(path)
  return total


def project_source_bytes() -> int:
  """The project's own Python files as a wheel would hold them: every package but
  tests/ and the top-level scripts."""
  total = sum(os.path.getsize(os.path.join(REPO, f)) for f in os.listdir(REPO)
              if f.endswith(".py"))
  for entry in os.listdir(REPO):
    if entry != "tests" and os.path.isfile(os.path.join(REPO, entry, "__init__.py")):
      for root, _, names in os.walk(os.path.join(REPO, entry)):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names
                     if n.endswith(".py"))
  return total


def runtime_bytes(runtime: Runtime) -> dict:
  """Installed size of what the runtime needs: its distributions (and for ours the
  project's whole install: its requirements and its Python files; for a runner, the
  runner file), with the distribution names."""
  if runtime.name == "ours":
    roots, own = ["nmt-enfr"], project_source_bytes()
  else:
    by_module = metadata.packages_distributions()
    roots = [d for m in sorted(runtime_modules(runtime)) for d in by_module.get(m, [])]
    roots += runtime.extra_distributions
    own = (os.path.getsize(os.path.join(REPO, runtime.runner_file))
           if runtime.runner_file else 0)
  dists = requirement_closure(roots)
  return {"runtime_bytes": own + sum(installed_bytes(d) for d in dists.values()),
          "runtime_distributions": sorted(dists)}


def checkpoint_files(workdir: str, checkpoint_dir: str | None) -> list[str]:
  """What inference reads of a workdir: config.json, run.json, spm.model and the
  latest step of `checkpoint_dir` (default WORKDIR/checkpoints) without the items
  only training reads (optimizer state, data iterators)."""
  directory = checkpoint_dir or os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"No checkpoint step in {directory}.")
  step = os.path.join(directory, str(steps[-1]))
  paths = [os.path.join(workdir, f) for f in ("config.json", "run.json", "spm.model")]
  paths += [os.path.join(step, f) for f in sorted(os.listdir(step))
            if f not in ("optimizer", "data")]
  return [p for p in paths if os.path.exists(p)]


def workdir_bytes(workdir: str, checkpoint_dir: str | None) -> int:
  return sum(tree_bytes(p) for p in checkpoint_files(workdir, checkpoint_dir))
