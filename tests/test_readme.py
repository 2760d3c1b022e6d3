"""The front door stays true: README.md's commands name flags that exist, links
resolve, the README stays short, the prose carries no commit hashes or words about how
the work was organised, and `make setup` installs the lock file's versions.
"""
import functools
from importlib import metadata
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 150
# A word of 7-40 hex digits holding both a digit and a letter: an abbreviated or full
# commit hash (plain numbers and words such as "decade" are not).
_HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
_PROCESS_WORDS = re.compile(r"\bissues? \d+|\bthe issue\b|\bsittings?\b|\bsessions?\b"
                            r"|previous README|\bREADME history", re.IGNORECASE)
_FENCE = re.compile(r"```bash\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"`([^`]*\.py\b[^`]*)`")
_SCRIPT = re.compile(r"^(?:\S*python3?\s+)?(?:-m\s+(bench\.\w+)|(\S+\.py))\b")


def _pages():
  return [README, *DOCS]


def _commands(text: str) -> list[str]:
  """Shell commands of a page: its bash blocks' lines and its inline `x.py ...` spans."""
  commands = []
  for block in _FENCE.findall(text):
    block = re.sub(r"\\\n\s*", " ", block)  # Continuation lines.
    for line in block.splitlines():
      line = line.split(" #")[0].strip()
      if line and not line.startswith("#"):
        commands += re.split(r"\s*(?:\||&&|;|&)\s*", line)
  commands += _INLINE.findall(re.sub(r"```.*?```", "", text, flags=re.DOTALL))
  return [c.strip() for c in commands if c.strip()]


def _script(command: str) -> str | None:
  """The repository script a command runs (train.py, bench/decode.py, ...), if any."""
  words = command.split()
  while words and ("=" in words[0] and not words[0].startswith("-")):
    words = words[1:]  # VAR=value prefixes.
  match = _SCRIPT.match(" ".join(words))
  if not match:
    return None
  module, path = match.groups()
  path = module.replace(".", "/") + ".py" if module else path
  path = path.removeprefix("./").removeprefix("python ")
  return path if (REPO / path).is_file() else None


def _flags_used(command: str) -> set[str]:
  try:
    words = shlex.split(command)
  except ValueError:
    words = command.split()
  names = set()
  for word in words:
    if match := re.match(r"--([A-Za-z][\w-]*)", word):
      names.add(match.group(1))  # --config.X overrides a field of --config.
  return names


@functools.cache
def _defined_flags(script: str) -> frozenset[str]:
  """Every flag `script` defines, from its --helpfull (one subprocess per script)."""
  module = script.removesuffix(".py").replace("/", ".")
  result = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's help exits 1.
  names = re.findall(r"^\s+--(?:\[no\])?([\w.-]+):", result.stdout, re.MULTILINE)
  assert names, f"{script} --helpfull lists no flags: {result.stdout[:500]}"
  return frozenset(names)


def test_readme_is_short():
  lines = README.read_text().count("\n")
  assert lines <= MAX_README_LINES, (
      f"README.md has {lines} lines; keep it to {MAX_README_LINES} and move depth to"
      " docs/.")


def test_readme_starts_with_make_train_then_make_test():
  first = [c for c in _commands(README.read_text()) if c.startswith("make")][:2]
  assert first == ["make train", "make test"], first


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_no_commit_hashes_or_process_words(page):
  text = page.read_text()
  problems = [f"{page.name}:{i}: {m.group(0)!r}" for i, line in
              enumerate(text.splitlines(), 1)
              for m in [*_HASH.finditer(line), *_PROCESS_WORDS.finditer(line)]]
  assert not problems, ("Describe a figure by its command, machine and versions, not"
                        " by commit or by how the work went:\n" + "\n".join(problems))


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_local_links_resolve(page):
  missing = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)",
                                             page.read_text())
             if "://" not in target and not (page.parent / target).exists()]
  assert not missing, f"{page.name} links to missing files: {missing}"


def test_make_targets_in_the_readme_exist():
  makefile = (REPO / "Makefile").read_text()
  targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
  variables = set(re.findall(r"^([A-Z_0-9]+)\s*\??=", makefile, re.MULTILINE))
  for page in _pages():
    for command in _commands(page.read_text()):
      if not command.startswith("make "):
        continue
      for word in command.split()[1:]:
        if "=" in word:
          assert word.split("=")[0] in variables, f"{page.name}: {command}"
        else:
          assert word in targets, f"{page.name}: {command}"


@pytest.mark.slow
def test_every_flag_in_the_readme_commands_exists():
  unknown = []
  for page in [README]:  # One --helpfull process per script it runs.
    for command in _commands(page.read_text()):
      script, used = _script(command), _flags_used(command)
      if script is None or not used:
        continue
      missing = used - _defined_flags(script)
      unknown += [f"{page.name}: {script} has no --{name} ({command})"
                  for name in sorted(missing)]
  assert not unknown, "\n".join(unknown)


def _lock_pins() -> dict[str, str]:
  pins = {}
  for line in (REPO / "requirements/lock.txt").read_text().splitlines():
    if match := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line):
      pins[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
  return pins


def test_make_setup_installs_through_the_lock():
  makefile = (REPO / "Makefile").read_text()
  setup = makefile[makefile.index("$(VENV)/.installed:"):].split("\n\n")[0]
  assert "-c $(LOCK)" in setup and "LOCK := requirements/lock.txt" in makefile
  pins = _lock_pins()
  for package in ("jax", "jaxlib", "flax", "orbax-checkpoint", "optax", "grain"):
    assert metadata.version(package) == pins[package], (
        f"{package} {metadata.version(package)} is installed, the lock pins"
        f" {pins[package]}: run `make clean setup`.")
