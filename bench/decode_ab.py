"""A/B of decoder variants on real sentences: same model, same file, interleaved.

  python -m bench.decode_ab --workdir=W --input=test.en.gz \\
      --variants='base;plain=compact=0;sync=JAX_CPU_ENABLE_ASYNC_DISPATCH=0'

Each variant is `name=SETTING,SETTING...` (just `name` for the defaults): SETTINGs
`compact=0|1` (the Decoder's segmented search), `batch_tokens=N`, `quantize=int8`,
`shortlist=1` (the workdir's vocabulary shortlist, `use_shortlist`),
`mode=file|batch1` (whole-file `Translator.translate`, or one sentence per call),
or an environment variable `VAR=value` (XLA_FLAGS, JAX_... : read when JAX starts).
Every variant runs in its own process, which translates the file once (compiling,
into a compilation cache of its own) and then times `--passes` passes; the variants
take turns for `--rounds` rounds, so load drifts onto all alike. Prints one JSON line
per variant: median pass seconds, its ratio to the first variant, and the share of
pass time spent outside the decoder calls (Python around the compiled programs).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.")
_INPUT = flags.DEFINE_string("input", None, "Source sentences (.gz read as gzip).")
_VARIANTS = flags.DEFINE_string("variants", "base;plain=compact=0",
                                "Variants separated by ';' (see the docstring).")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 0, "First N lines (0: all).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Turns of every variant.")
_PASSES = flags.DEFINE_integer("passes", 2, "Timed passes per turn.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one variant's turn.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OPTIONS = ("compact", "batch_tokens", "quantize", "mode", "shortlist")


def parse(spec: str) -> tuple[str, dict, dict]:
  """(name, decoder options, environment) of one `name=SETTING,...` variant."""
  name, _, rest = spec.partition("=")
  options, env = {}, {}
  for setting in filter(None, rest.split(",")):
    key, _, value = setting.partition("=")
    (options if key in _OPTIONS else env)[key] = value
  return name.strip(), options, env


def _child(options: dict) -> dict:
  """Seconds of each timed pass of one variant over the file, and of the part of
  each spent inside the decoder's calls (the rest: tokenizing, bucketing,
  detokenizing, restoring the order)."""
  from bench import real_text_engines  # pylint: disable=import-outside-toplevel
  from inference import compile_cache  # pylint: disable=import-outside-toplevel
  from inference.translator import Translator  # pylint: disable=import-outside-toplevel
  compile_cache.enable(os.environ.get("DECODE_AB_CACHE"))
  lines = real_text_engines.read_lines(_INPUT.value)
  lines = lines[:_MAX_SENTENCES.value or len(lines)]
  translator = Translator.from_workdir(
      _WORKDIR.value, quantize=options.get("quantize"),
      batch_tokens=int(options.get("batch_tokens", 4096)))
  translator.decoder.compact = options.get("compact", "1") == "1"
  rules = {"use_shortlist": True} if options.get("shortlist") == "1" else {}
  if options.get("mode", "file") == "batch1":
    run = lambda: [translator.translate([line], **rules) for line in lines]
  else:
    run = lambda: translator.translate(lines, **rules)
  in_decode = [0.0]
  decode = translator._decode  # pylint: disable=protected-access

  def timed_decode(*args, **kwargs):
    start = time.perf_counter()
    out = decode(*args, **kwargs)
    in_decode[0] += time.perf_counter() - start
    return out
  translator.__dict__["_decode"] = timed_decode  # The cached_property's slot.
  run()  # Compiles (or loads from the cache).
  times, decoding = [], []
  for _ in range(_PASSES.value):
    in_decode[0] = 0.0
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
    decoding.append(in_decode[0])
  return {"times": times, "in_decode": decoding}


def main(argv):
  del argv
  if _CHILD.value is not None:
    print(json.dumps(_child(json.loads(_CHILD.value))), flush=True)
    return
  variants = [parse(v) for v in _VARIANTS.value.split(";")]
  times = {name: [] for name, _, _ in variants}
  decoding = {name: [] for name, _, _ in variants}
  with tempfile.TemporaryDirectory() as cache:
    for r in range(_ROUNDS.value):
      for name, options, env in variants[r % len(variants):] + variants[:r % len(
          variants)]:
        argv = [sys.executable, "-m", "bench.decode_ab", f"--workdir={_WORKDIR.value}",
                f"--input={_INPUT.value}", f"--max_sentences={_MAX_SENTENCES.value}",
                f"--passes={_PASSES.value}", f"--child={json.dumps(options)}"]
        child_env = {**os.environ, "JAX_PLATFORMS": "cpu",
                     "DECODE_AB_CACHE": os.path.join(cache, name), **env}
        out = subprocess.run(argv, cwd=REPO, env=child_env, capture_output=True,
                             text=True, check=False)
        if out.returncode:
          raise RuntimeError(f"variant {name} failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        times[name] += result["times"]
        decoding[name] += result["in_decode"]
  base = statistics.median(times[variants[0][0]])
  for name, options, env in variants:
    median = statistics.median(times[name])
    print(json.dumps({"variant": name, **options, **env, "median_pass_s":
                      round(median, 3), "passes": len(times[name]),
                      "over_first": round(median / base, 3),
                      "outside_decode_share": round(1 - sum(decoding[name])
                                                    / sum(times[name]), 3),
                      "times": [round(t, 3) for t in times[name]]}), flush=True)


if __name__ == "__main__":
  app.run(main)
