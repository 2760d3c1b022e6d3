"""Cold starts for bench/real_text.py: a new process per engine, timed from its start.

The parent (`cold_starts`) starts `python -m bench.real_text_cold SPEC` and times
process start to the first line the child prints: the file's first sentence,
translated alone (what a user or a request waits for). The child then translates
the whole file twice (its first pass, compiling what the first sentence did not;
then a warm pass) and prints its own breakdown as JSON: imports, orbax restore,
first sentence, passes. Ours runs with an empty compilation cache and with the
cache the benchmark process filled; CTranslate2 needs none. `infer.py
--mode=translate` on the file, with the warm cache, is timed the same way (its first
output line comes after its first chunk of lines).
"""
from collections.abc import Sequence
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spawn(argv: list[str], env: dict | None = None) -> dict:
  """Runs argv: seconds to its first stdout line and to its end, its last line."""
  start = time.perf_counter()
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=REPO)
  first = proc.stdout.readline()
  first_s = time.perf_counter() - start
  rest, errors = proc.communicate()
  if proc.returncode != 0 or not first:
    raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):"
                       f" {errors[-2000:]}")
  lines = rest.strip().splitlines()
  return {"first_line_s": round(first_s, 2),
          "total_s": round(time.perf_counter() - start, 2),
          "last": lines[-1] if lines else ""}


def _child_line(spec: dict, label: str, env: dict) -> dict:
  out = _spawn([sys.executable, "-m", "bench.real_text_cold", json.dumps(spec)], env)
  return {"kind": "cold", "engine": label, **json.loads(out.pop("last")), **out}


def cold_starts(engines: Sequence, workdir: str, checkpoint_dir: str | None,
                lines: list[str], warm_cache: str | None, tmp: str, *,
                quick: bool = False) -> list[dict]:
  """One `cold` line per child process (see the module docstring)."""
  from bench import real_text_engines  # pylint: disable=import-outside-toplevel
  lines_file = os.path.join(tmp, "cold_input.txt")
  with open(lines_file, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  out = []
  for engine in engines:
    if isinstance(engine, real_text_engines.Ours):
      caches = {"warm": warm_cache} if quick else {
          "empty": os.path.join(tmp, f"empty_cache_{engine.precision}"),
          "warm": warm_cache}
      for state, cache in caches.items():
        spec = {"engine": "ours", "workdir": workdir, "checkpoint_dir": checkpoint_dir,
                "precision": engine.precision, "cache_dir": cache,
                "batch_tokens": engine.translator.batch_tokens,
                "lines_file": lines_file}
        out.append({**_child_line(spec, engine.name, env), "cache": state})
    elif engine.threads == max(e.threads for e in engines
                               if isinstance(e, type(engine))):
      spec = {"engine": "ctranslate2", **engine.spec(), "lines_file": lines_file}
      out.append(_child_line(spec, engine.name, env))
  if not quick:
    argv = [sys.executable, "infer.py", "--mode=translate", f"--workdir={workdir}",
            f"--input={lines_file}", f"--compilation_cache_dir={warm_cache}"]
    if checkpoint_dir:
      argv.append(f"--checkpoint_dir={checkpoint_dir}")
    timing = _spawn(argv, env)
    timing.pop("last")
    out.append({"kind": "cold", "engine": "infer.py --mode=translate", "cache": "warm",
                **timing})
  return out


def _child(spec: dict) -> dict:
  """Builds the engine, prints the first sentence's translation, then two passes."""
  start = time.perf_counter()
  with open(spec.pop("lines_file"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  from bench import real_text_engines  # pylint: disable=import-outside-toplevel
  times = {}
  if spec.pop("engine") == "ours":
    from inference import compile_cache  # pylint: disable=import-outside-toplevel
    compile_cache.enable(spec["cache_dir"])
    # pylint: disable-next=import-outside-toplevel
    from inference import translator as translator_lib
    times["import_s"] = time.perf_counter() - start
    precision = spec["precision"]
    translator = translator_lib.Translator.from_workdir(
        spec["workdir"], checkpoint_dir=spec["checkpoint_dir"],
        quantize=None if precision == "float32" else precision,
        batch_tokens=spec["batch_tokens"])
    times["restore_s"] = time.perf_counter() - start - times["import_s"]
    engine = real_text_engines.Ours(translator, precision)
  else:
    times["import_s"] = time.perf_counter() - start
    engine = real_text_engines.CTranslate2(**spec)
    times["restore_s"] = time.perf_counter() - start - times["import_s"]
  mark = time.perf_counter()
  texts, _ = engine.translate_file(lines[:1])
  print(texts[0], flush=True)
  times["first_sentence_s"] = time.perf_counter() - mark
  for name in ("first_pass_s", "warm_pass_s"):
    mark = time.perf_counter()
    engine.translate_file(lines)
    times[name] = time.perf_counter() - mark
  return {k: round(v, 3) for k, v in times.items()}


if __name__ == "__main__":
  print(json.dumps(_child(json.loads(sys.argv[1]))), flush=True)
