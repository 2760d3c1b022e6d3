"""Package layering, read from the source with `ast` (no imports, no jax).

Every import arrow points down `LAYERS`: a package imports its own modules and those
of lower layers only, never a package of its own layer or above (so training/ and
inference/ never import each other). The top-level scripts import packages and
never another script. Inference (and what it pulls in) never needs grain.
"""
import ast
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Lowest first. A package may import only from the layers below its own.
LAYERS = (
    ("storage", "parallel"),  # Files and workdir layout; device mesh and sharding.
    ("models", "data", "configs"),  # The network and search; datasets, tokenizer.
    ("training", "inference"),  # The two phases.
    ("recipes",),  # Whole jobs built from both phases: train and score, distill.
    ("aot",),  # Both phases' programs compiled ahead of time for TPU topologies.
    ("cli",),  # Flags shared by the scripts.
    ("bench",),  # Benchmark scripts (python -m bench.NAME) and their helpers.
)
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}
SCRIPTS = tuple(sorted(p.stem for p in REPO.glob("*.py")))


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


def test_every_project_package_has_a_layer():
  packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
  assert packages == set(LAYER)
  assert {"train", "infer", "distill"} <= set(SCRIPTS)


@pytest.mark.parametrize("package", sorted(LAYER))
def test_no_import_arrow_points_up_or_across(package):
  """A module imports from its own package and from lower layers only."""
  bad = {}
  for f in _files(package):
    wrong = sorted(n for n in imports(f) if (root := n.split(".")[0]) != package
                   and ((root in LAYER and LAYER[root] >= LAYER[package])
                        or root in SCRIPTS))
    if wrong:
      bad[str(f.relative_to(REPO))] = wrong
  assert not bad


def test_scripts_import_no_script():
  bad = {f"{s}.py": sorted(n for n in imports(REPO / f"{s}.py")
                           if n.split(".")[0] in SCRIPTS)
         for s in SCRIPTS}
  assert not {f: n for f, n in bad.items() if n}


def test_inference_and_storage_do_not_import_grain():
  bad = [str(f.relative_to(REPO)) for f in _files("inference", "storage")
         if "grain" in _roots(imports(f))]
  assert not bad


INFERENCE_SCRIPTS = ("infer", "serve", "export", "average")


def test_inference_reaches_no_grain_and_no_training_through_other_modules():
  """Following project imports from inference/, storage/ and the inference scripts
  (into data.datasets, data.tokenizer, models, ...) reaches neither grain nor the
  training package."""
  scripts = [REPO / f"{s}.py" for s in INFERENCE_SCRIPTS]
  modules, external = closure(_files("inference", "storage") + scripts)
  assert "grain" not in _roots(external), external.get("grain")
  assert "training" not in _roots(modules)
  # The walk did follow project imports into other packages and the scripts' flags.
  assert {"data.datasets", "models.decoding", "cli.inference_flags"} <= modules


def test_the_checks_would_see_a_violation(tmp_path, monkeypatch):
  """The training side does reach grain (data.pipeline), so the walk finds it; an
  arrow up and a script importing a script are caught."""
  assert "grain" in _roots(imports(REPO / "data" / "pipeline.py"))
  assert "grain" in _roots(closure([REPO / "training" / "trainer.py"])[1])
  assert "inference" in _roots(closure([REPO / "train.py"])[0])
  monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
  monkeypatch.setattr(sys.modules[__name__], "SCRIPTS", ("train", "distill"))
  (tmp_path / "storage").mkdir()
  (tmp_path / "storage" / "layout.py").write_text("from data import tokenizer\n")
  (tmp_path / "distill.py").write_text("import train\n")
  (tmp_path / "train.py").write_text("from recipes import train_and_score\n")
  with pytest.raises(AssertionError):
    test_no_import_arrow_points_up_or_across("storage")
  with pytest.raises(AssertionError):
    test_scripts_import_no_script()
