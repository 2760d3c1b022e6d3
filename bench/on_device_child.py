"""The child processes of bench/on_device.py, one runtime each.

  python -m bench.on_device_child translate SPEC < input.en > output.fr
  python -m bench.on_device_child latency SPEC

`translate` is the CTranslate2 runner: lines in, one translation per line out, as
`runners/stablehlo.py` and `infer.py --mode=translate` do. `latency` loads the
runtime through its Python API, translates SPEC's input file twice (the first pass
compiles what it needs; the second is timed), then its first `latency_sentences`
lines one call each, twice (warm-up, then timed), and prints one JSON line of
seconds. SPEC (JSON) names the runtime:

  {"runtime": "ours", "workdir": DIR, "checkpoint_dir": DIR|null, "cache_dir": DIR|""}
      inference.Translator.from_workdir, or .from_bundle if DIR is a bundle;
  {"runtime": "ctranslate2", "engine": {...}}  bench/real_text_engines.CTranslate2;
  {"runtime": "runner", "runner_file": PATH, "model_dir": DIR}
      the runner file's `Model(model_dir).translate(lines)` (runners/stablehlo.py).

Only the chosen runtime is imported: no JAX for CTranslate2, no project module for a
runner file.
"""
from collections.abc import Callable
import importlib.util
import json
import sys
import time

Translate = Callable[[list[str]], list[str]]


def _ours(spec: dict) -> Translate:
  # pylint: disable=import-outside-toplevel
  from inference import compile_cache
  compile_cache.enable(spec["cache_dir"])
  from inference import bundle
  from inference.translator import Translator
  if bundle.is_bundle(spec["workdir"]):
    translator = Translator.from_bundle(spec["workdir"])
  else:
    translator = Translator.from_workdir(spec["workdir"],
                                         checkpoint_dir=spec["checkpoint_dir"])
  return lambda lines: [t.text for t in translator.translate(lines)]


def _ctranslate2(spec: dict) -> Translate:
  from bench import real_text_engines  # pylint: disable=import-outside-toplevel
  engine = real_text_engines.CTranslate2(**spec["engine"])
  return lambda lines: engine.translate_file(lines)[0]


def _runner(spec: dict) -> Translate:
  """A runner file's Model class, loaded by path (runners/ is not a package)."""
  module_spec = importlib.util.spec_from_file_location("_on_device_runner",
                                                       spec["runner_file"])
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(getattr(module, "Model", None), "translate"):
    raise SystemExit(f"{spec['runner_file']} has no Model(model_dir).translate(lines)"
                     " to time one sentence at a time.")
  model = module.Model(spec["model_dir"])
  return lambda lines: list(model.translate(lines))


def load(spec: dict) -> Translate:
  return {"ours": _ours, "ctranslate2": _ctranslate2,
          "runner": _runner}[spec["runtime"]](spec)


def read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def latency(spec: dict) -> dict:
  """Seconds of load, the first and the timed whole-file pass, and each sentence."""
  start = time.perf_counter()
  translate = load(spec)
  out = {"load_s": time.perf_counter() - start}
  lines = read_lines(spec["input"])
  for name in ("first_pass_s", "warm_pass_s"):
    mark = time.perf_counter()
    texts = translate(lines)
    out[name] = time.perf_counter() - mark
  if len(texts) != len(lines):
    raise SystemExit(f"{len(texts)} translations of {len(lines)} lines.")
  single = lines[:spec["latency_sentences"]]
  for line in single:
    translate([line])
  times = []
  for line in single:
    mark = time.perf_counter()
    translate([line])
    times.append(time.perf_counter() - mark)
  return {**{k: round(v, 4) for k, v in out.items()},
          "sentence_s": [round(t, 5) for t in times]}


def main(argv: list[str]) -> None:
  if len(argv) != 3 or argv[1] not in ("translate", "latency"):
    raise SystemExit(__doc__)
  spec = json.loads(argv[2])
  if argv[1] == "latency":
    print(json.dumps(latency(spec)), flush=True)
    return
  translate = load(spec)
  data = sys.stdin.buffer.read().split(b"\n")  # As runners/stablehlo.py reads it.
  lines = [line.rstrip(b"\r").decode("utf-8", errors="replace")
           for line in (data[:-1] if data[-1] == b"" else data)]
  sys.stdout.write("".join(t + "\n" for t in translate(lines)) if lines else "")


if __name__ == "__main__":
  main(sys.argv)
