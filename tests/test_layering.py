"""Package layering, read from the source with `ast` (no imports, no jax).

training/ and inference/ never import each other; storage/, models/, parallel/ and
data/ import neither; inference (and what it pulls in) never needs grain.
"""
import ast
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LOWER = ("storage", "models", "parallel", "data")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, anywhere in the file, as dotted absolute names.

  `from a import b` gives both `a` and `a.b` (b may be a submodule); relative imports
  are resolved against the file's package.
  """
  package = _module_name(path).split(".")
  if path.name != "__init__.py":
    package = package[:-1]
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = package[:len(package) - node.level + 1] if node.level else []
      module = ".".join(base + ([node.module] if node.module else []))
      names.add(module)
      names.update(f"{module}.{alias.name}" for alias in node.names)
  return names


def _roots(names) -> set[str]:
  return {name.split(".")[0] for name in names}


def _files(*packages: str) -> list[pathlib.Path]:
  files = [f for p in packages for f in sorted((REPO / p).rglob("*.py"))]
  assert files, packages
  return files


def _project_file(module: str) -> pathlib.Path | None:
  base = REPO.joinpath(*module.split("."))
  for candidate in (base.with_suffix(".py"), base / "__init__.py"):
    if candidate.is_file():
      return candidate
  return None


def closure(files) -> tuple[set[str], dict[str, pathlib.Path]]:
  """(project modules, {external module: a project file importing it}) reachable
  from `files`, following project imports (parent packages included)."""
  todo, seen, external = list(files), set(), {}
  while todo:
    path = todo.pop()
    if path in seen:
      continue
    seen.add(path)
    for name in imports(path):
      parts = name.split(".")
      found = [f for f in (_project_file(".".join(parts[:i]))
                           for i in range(1, len(parts) + 1)) if f]
      if found:
        todo += found
      elif _project_file(parts[0]) is None:
        external.setdefault(name, path)
  return {_module_name(f) for f in seen}, external


def test_parser_sees_every_import_form(tmp_path, monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
  (tmp_path / "pkg").mkdir()
  module = tmp_path / "pkg" / "mod.py"
  module.write_text("import inference.translate as t\n"
                    "from training import trainer\n"
                    "from . import sibling\n"
                    "from .other import thing\n"
                    "def f():\n"
                    "  import grain\n")
  assert {"inference.translate", "training", "training.trainer", "pkg.sibling",
          "pkg.other", "pkg.other.thing", "grain"} <= imports(module)
  assert _roots(imports(module)) >= {"inference", "training", "grain"}


@pytest.mark.parametrize("package,forbidden", [
    ("training", {"inference"}),
    ("inference", {"training"}),
    *((p, {"training", "inference"}) for p in LOWER),
])
def test_packages_do_not_import_across_layers(package, forbidden):
  bad = {str(f.relative_to(REPO)): sorted(n for n in imports(f)
                                          if n.split(".")[0] in forbidden)
         for f in _files(package)}
  assert not {f: n for f, n in bad.items() if n}


def test_inference_and_storage_do_not_import_grain():
  bad = [str(f.relative_to(REPO)) for f in _files("inference", "storage")
         if "grain" in _roots(imports(f))]
  assert not bad


def test_inference_reaches_no_grain_and_no_training_through_other_modules():
  """Following project imports from inference/, storage/ and infer.py (data.datasets,
  data.tokenizer, bench, ...) reaches neither grain nor the training package."""
  modules, external = closure(_files("inference", "storage") + [REPO / "infer.py"])
  assert "grain" not in _roots(external), external.get("grain")
  assert "training" not in _roots(modules)
  # The walk did follow project imports into other packages.
  assert {"data.datasets", "models.decoding", "bench.decode"} <= modules


def test_the_checks_would_see_a_violation():
  """The training side does reach grain (data.pipeline), so the walk finds it."""
  assert "grain" in _roots(imports(REPO / "data" / "pipeline.py"))
  assert "grain" in _roots(closure([REPO / "training" / "trainer.py"])[1])
  assert "inference" in _roots(closure([REPO / "train.py"])[0])
