"""Real sentences, a trained model: our decoder against CTranslate2 on the same weights.

  python -m bench.real_text --workdir=workdir/default \\
      --input=../shared/data/multi30k/test_2016_flickr.en.gz \\
      --reference=../shared/data/multi30k/test_2016_flickr.fr.gz

The run's parameters (its final average if it has one, else the latest checkpoint)
are exported to CTranslate2 as float32 and int8 in a temporary directory. Engines:
ours (`Translator`, float32 and `--quantize=int8`) and CTranslate2 at each
`--intra_threads`, for each of `--precisions`. Modes: the whole file (each engine's
own token-budget batching: ours `Translator.translate`, CTranslate2 `translate_batch`
with `max_batch_size=--ct2_batch_tokens, batch_type="tokens"`) and the file's lines in
consecutive fixed batches of `--batch_sizes` (one call per batch; batch 1 gives the
one-sentence latency). Each engine first translates the whole file once (its first
pass: our compilation, in a fresh compilation cache), then `--rounds` rounds time
every mode, the engines' order rotating each round so load drifts onto all alike.
Cold start runs in subprocesses: process start to the first output line (the file's
first sentence alone), then a first and a second pass over the file, with an empty
and with a warm compilation cache (bench/real_text_cold.py).

Prints JSON lines: one `header`, one per (engine, mode) with medians over rounds
(sentences/s, target tokens/s, p50/p90 ms per call, BLEU of the whole-file mode),
one `ratio` line per (precision, mode): ours over CTranslate2's best thread setting,
then the `cold` lines. Only same-run ratios compare machines.
"""
import collections
import json
import os
import statistics
import sys
import tempfile
import time

# A CPU benchmark: JAX need not probe for accelerators (a TPU plugin warns at length).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench import real_text_engines as engines_lib  # Sets CT2_USE_MKL first.
from bench import real_text_cold  # pylint: disable=g-bad-import-order

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from bench import provenance
from inference import bleu
from inference import bucketing
from inference import compile_cache
from inference import export
from inference.translator import Translator
from storage import layout

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
_INPUT = flags.DEFINE_string("input", None, "Source sentences, one per line (.gz"
                             " read as gzip).", required=True)
_REFERENCE = flags.DEFINE_string("reference", None, "Line-aligned references, for"
                                 " each engine's BLEU.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Parameters to read; default the run's final average"
    " (WORKDIR/averaged_lastN) if it exists, else WORKDIR/checkpoints.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32", "64"],
                                 "Fixed batch sizes (lines per call).")
_THREADS = flags.DEFINE_list("intra_threads", ["1", "2"], "CTranslate2 intra_threads.")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "int8"],
                                "Weight types, each engine at each.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds of every mode.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 4096, "Our whole-file token"
                                     " budget per batch, padding included.")
_CT2_BATCH_TOKENS = flags.DEFINE_integer("ct2_batch_tokens", 4096, "CTranslate2's"
                                         " whole-file max_batch_size in tokens.")
_CT2_LENGTH_PENALTY = flags.DEFINE_float(
    "ct2_length_penalty", 1.0, "CTranslate2's length_penalty (its default; it"
    " divides by length ** penalty where ours uses GNMT's alpha).")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 0, "Use the first N lines"
                                      " (0: all).")
_COLD = flags.DEFINE_bool("cold", True, "Measure cold starts in subprocesses.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: 16 lines, 1 round, batches"
                           " 1 and 8, 1 thread, float32, one warm-cache cold start.")


def _checkpoint_dir() -> str | None:
  if _CHECKPOINT_DIR.value:
    return _CHECKPOINT_DIR.value
  averaged = layout.final_average_dir(_WORKDIR.value)
  return averaged and str(averaged)


def _settings() -> dict:
  """The flag values as this run uses them (--quick overrides)."""
  s = dict(batch_sizes=[int(b) for b in _BATCH_SIZES.value],
           threads=[int(t) for t in _THREADS.value], precisions=_PRECISIONS.value,
           rounds=_ROUNDS.value, max_sentences=_MAX_SENTENCES.value)
  if _QUICK.value:
    s.update(batch_sizes=[1, 8], threads=[1], precisions=["float32"], rounds=1,
             max_sentences=_MAX_SENTENCES.value or 16)
  return s


def build_engines(settings: dict, export_dir: str) -> tuple[list, dict]:
  """Our engines and CTranslate2's; restore and export seconds per precision."""
  ours, ct2, seconds = [], [], {}
  for precision in settings["precisions"]:
    start = time.perf_counter()
    translator = Translator.from_workdir(
        _WORKDIR.value, checkpoint_dir=_checkpoint_dir(),
        quantize=None if precision == "float32" else precision,
        batch_tokens=_BATCH_TOKENS.value)
    seconds[f"restore_s/{precision}"] = round(time.perf_counter() - start, 2)
    ours.append(engines_lib.Ours(translator, precision))
  translator = ours[0].translator
  model = nnx.merge(translator.graphdef, translator.params)
  options = {**export.translate_options(export.vocabulary(translator.tokenizer),
                                        beam_size=translator.settings.beam_size,
                                        max_decoding_length=translator.max_len),
             "length_penalty": _CT2_LENGTH_PENALTY.value}
  for precision in settings["precisions"]:
    start = time.perf_counter()
    directory = export.export_ctranslate2(
        model, None, model.cfg, translator.tokenizer,
        os.path.join(export_dir, precision),
        quantization=None if precision == "float32" else precision)
    seconds[f"export_s/{precision}"] = round(time.perf_counter() - start, 2)
    for threads in settings["threads"]:
      ct2.append(engines_lib.CTranslate2(
          directory, precision, threads,
          os.path.join(_WORKDIR.value, layout.TOKENIZER_FILE),
          options, translator.settings.max_len_a, translator.settings.max_len_b,
          translator.max_len, _CT2_BATCH_TOKENS.value))
  return ours + ct2, seconds


def _chunks(lines: list[str], size: int) -> list[list[str]]:
  return [lines[i:i + size] for i in range(0, len(lines), size)]


def _warm_batches(engine, lines: list[str], sizes: list[int]) -> None:
  """Compiles our programs for every batch shape the fixed-batch modes will call."""
  if not isinstance(engine, engines_lib.Ours):
    return
  for size in sizes:
    seen = set()
    for chunk in _chunks(lines, size):
      shape = (len(chunk), max(len(s.ids) for s in engine.translator.tokenize(chunk)))
      shape = (shape[0], bucketing.bucket(shape[1]))
      if shape not in seen:
        seen.add(shape)
        engine.translate_batch(chunk)


def run_mode(engine, mode, lines: list[str]) -> tuple[list[float], list[str], int]:
  """(seconds per call, texts, target tokens) of one pass of `mode` over `lines`."""
  if mode == "file":
    start = time.perf_counter()
    texts, tokens = engine.translate_file(lines)
    return [time.perf_counter() - start], texts, tokens
  calls, texts, tokens = [], [], 0
  for chunk in _chunks(lines, mode):
    start = time.perf_counter()
    out, n = engine.translate_batch(chunk)
    calls.append(time.perf_counter() - start)
    texts += out
    tokens += n
  return calls, texts, tokens


def _line(engine, mode, passes, sentences: int, references) -> dict:
  """One engine's figures in one mode, medians over its timed passes."""
  totals = [sum(calls) for calls, _, _ in passes]
  calls = [c for p in passes for c in p[0]]
  median = statistics.median(totals)
  line = {"kind": "result", "engine": engine.name, "precision": engine.precision,
          "threads": getattr(engine, "threads", None),
          "mode": "file" if mode == "file" else "batch",
          "batch_size": None if mode == "file" else mode,
          "sentences_per_s": round(sentences / median, 1),
          "target_tokens_per_s": round(passes[-1][2] / median, 1),
          "pass_s": round(median, 3), "passes": len(passes),
          "p50_ms": round(1000 * float(np.percentile(calls, 50)), 2),
          "p90_ms": round(1000 * float(np.percentile(calls, 90)), 2)}
  if references is not None:
    line["bleu_lc_tok"] = bleu.score(passes[-1][1], references)["bleu_lc_tok"]
  return line


def ratio_lines(results: list[dict]) -> list[dict]:
  """Ours over CTranslate2's best thread setting, per precision and mode.

  speed: sentences/s ours / best CTranslate2 (> 1: ours faster); p50: CTranslate2's
  best p50 / ours (> 1: ours faster).
  """
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r["precision"], r["mode"], r["batch_size"])].append(r)
  out = []
  for (precision, mode, batch), rows in groups.items():
    ours = [r for r in rows if r["engine"].startswith("ours")]
    theirs = [r for r in rows if not r["engine"].startswith("ours")]
    if not ours or not theirs:
      continue
    fastest = max(theirs, key=lambda r: r["sentences_per_s"])
    lowest = min(theirs, key=lambda r: r["p50_ms"])
    line = {"kind": "ratio", "precision": precision, "mode": mode, "batch_size": batch,
            "ct2_best": fastest["engine"],
            "speed_ours_over_ct2": round(ours[0]["sentences_per_s"]
                                         / fastest["sentences_per_s"], 3),
            "p50_ct2_over_ours": round(lowest["p50_ms"] / ours[0]["p50_ms"], 3)}
    if "bleu_lc_tok" in ours[0]:
      line["bleu_ours_minus_ct2"] = round(ours[0]["bleu_lc_tok"]
                                          - fastest["bleu_lc_tok"], 2)
    out.append(line)
  return out


def header(settings: dict, lines: list[str], seconds: dict) -> dict:
  import ctranslate2  # pylint: disable=import-outside-toplevel
  return {"kind": "header", "workdir": _WORKDIR.value, "input": _INPUT.value,
          "checkpoint_dir": _checkpoint_dir(), "sentences": len(lines),
          **settings, "batch_tokens": _BATCH_TOKENS.value,
          "ct2_batch_tokens": _CT2_BATCH_TOKENS.value, **seconds,
          "jax": jax.__version__, "ctranslate2": ctranslate2.__version__,
          "CT2_USE_MKL": os.environ.get("CT2_USE_MKL"),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "git": provenance.git_commit(), **provenance.cpu()}


def _print(line: dict) -> None:
  print(json.dumps(line), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  settings = _settings()
  lines = engines_lib.read_lines(_INPUT.value)
  references = engines_lib.read_lines(_REFERENCE.value) if _REFERENCE.value else None
  if references is not None and len(references) != len(lines):
    raise app.UsageError(f"--reference has {len(references)} lines, --input"
                         f" {len(lines)}: give line-aligned files.")
  if settings["max_sentences"]:
    lines = lines[:settings["max_sentences"]]
    references = references and references[:settings["max_sentences"]]
  if not all(line.strip() for line in lines):
    raise app.UsageError(f"{_INPUT.value} has empty lines: give sentences only.")
  with tempfile.TemporaryDirectory() as tmp:
    # A fresh cache: our first pass compiles, as a user's first run does.
    cache_dir = compile_cache.enable(os.path.join(tmp, "jax_cache"))
    engines, seconds = build_engines(settings, tmp)
    _print(header(settings, lines, seconds))
    start = time.perf_counter()
    first = {}
    for engine in engines:
      calls, _, _ = run_mode(engine, "file", lines)
      first[engine.name] = calls[0]
      _warm_batches(engine, lines, settings["batch_sizes"])
    modes = ["file"] + settings["batch_sizes"]
    passes = collections.defaultdict(list)
    for r in range(settings["rounds"]):
      round_start = time.perf_counter()
      for mode in modes:
        for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
          passes[(engine.name, mode)].append(run_mode(engine, mode, lines))
      if r == 0:
        left = (time.perf_counter() - round_start) * (settings["rounds"] - 1)
        print(f"real_text: warm-up {round_start - start:.0f} s, round 1"
              f" {time.perf_counter() - round_start:.0f} s; about {left:.0f} s of"
              " rounds left, then the cold starts.", file=sys.stderr, flush=True)
    results = []
    for engine in engines:
      for mode in modes:
        line = _line(engine, mode, passes[(engine.name, mode)], len(lines),
                     references if mode == "file" else None)
        if mode == "file":
          line["first_pass_sentences_per_s"] = round(len(lines) / first[engine.name],
                                                     1)
        results.append(line)
        _print(line)
    for line in ratio_lines(results):
      _print(line)
    if _COLD.value:
      for line in real_text_cold.cold_starts(
          engines, _WORKDIR.value, _checkpoint_dir(), lines, cache_dir, tmp,
          quick=_QUICK.value):
        _print(line)


if __name__ == "__main__":
  app.run(main)
