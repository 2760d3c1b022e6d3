"""Decode latency side by side: our jitted beam search against CTranslate2, same weights.

  python -m bench.decode_vs_ctranslate2 --config=configs/transformer_base.py \\
      --batch_sizes=1,8,32 --repeats=10 --intra_threads=2,1

One set of random weights (the config's model, float32, `--vocab_size`) runs in our
decoder (and, with `--ours`, as bfloat16 or int8 variants of it) and, exported by
`inference.export`, in CTranslate2 with float32 and int8 weights. The protocol is
bench/decode.py's: the same synthetic sources, output forced to `--forced_len`
tokens with EOS suppressed (CTranslate2: min = max decoding length),
pad never emitted, beam `--beam_size`, so every engine does the same decoder steps.
For each batch size every engine is called once untimed (our compilation), then the
engines are timed in turn, `--repeats` rounds, the order rotating each round, so
load changes on a shared machine hit all of them alike. One JSON line per engine and
batch size, with medians; CTranslate2 lines carry `ours_over_ct2`, our median over
theirs. Needs the optional ctranslate2 package.
"""
from collections.abc import Callable
import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import ctranslate2
import jax
import numpy as np
from ml_collections import config_flags

from bench import provenance
from bench.synthetic import synthetic_sources
from data import tokenizer as tokenizer_lib
from inference import export
from inference import restore
from models import decoding
from models import quantization
from models import transformer
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformer_base.py",
                                          "Config whose model to decode with.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary (random weights).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed rounds per batch size.")
_SRC_LEN = flags.DEFINE_integer("src_len", 32, "Source tokens, EOS included.")
_FORCED_LEN = flags.DEFINE_integer("forced_len", 64, "Output tokens, EOS suppressed.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam width.")
_THREADS = flags.DEFINE_list("intra_threads", [str(os.cpu_count() or 1)],
                             "CTranslate2 intra_threads values, one engine each"
                             " (default: this machine's cores).")
_QUANTIZATIONS = flags.DEFINE_list("quantizations", ["float32", "int8"],
                                   "CTranslate2 weight types, one engine each.")
_OURS = flags.DEFINE_list(
    "ours", ["float32"], "Our decoder's variants, one engine each: float32, bfloat16"
    " (parameters and compute), int8 or int8_weights (models/quantization.py).")
_SEED = flags.DEFINE_integer("seed", 0, "Parameter initialisation seed.")
_ENGINES = flags.DEFINE_list(
    "engines", ["ours", "ctranslate2"], "Engines to time. One engine per process"
    " (two runs, back to back) keeps JAX's thread pool from slowing CTranslate2's"
    " threads; the ratio is then printed by neither run.")


def _ours(model_cfg: transformer.TransformerConfig, graphdef, params,
          inputs: np.ndarray) -> Callable[[], int]:
  """Our beam search on `inputs` [batch, src_len]; returns the output token count."""
  partitioner = Partitioner(mesh_lib.create_mesh((-1, 1, 1)))
  search = decoding.jit_beam_search(partitioner)
  inputs = jax.device_put(inputs, partitioner.batch_sharding(inputs.shape))
  max_decode_len = min(model_cfg.max_len, max(_FORCED_LEN.value, 2 * _SRC_LEN.value))

  def call() -> int:
    out = jax.block_until_ready(search(
        graphdef, params, inputs, 0.6, 1.5, 10.0, eos_id=tokenizer_lib.EOS_ID,
        beam_size=_BEAM.value, max_decode_len=max_decode_len,
        forced_len=_FORCED_LEN.value))
    return int(np.asarray(out.lengths)[:, 0].sum())
  return call


def _ct2(translator: ctranslate2.Translator, pieces: list[str],
         inputs: np.ndarray) -> Callable[[], int]:
  """CTranslate2 on the same sources (pieces; the model appends EOS itself)."""
  sources = [[pieces[t] for t in row[:-1]] for row in inputs]  # Drop the EOS.
  options = export.translate_options(pieces, beam_size=_BEAM.value,
                                     max_decoding_length=_FORCED_LEN.value,
                                     forced_len=_FORCED_LEN.value)

  def call() -> int:
    results = translator.translate_batch(sources, **options)
    return sum(len(r.hypotheses[0]) for r in results)
  return call


def _variant(name: str, model_cfg: transformer.TransformerConfig, graphdef, params):
  """(graphdef, params) of our decoder's `name` variant of the float32 weights."""
  if name in quantization.MODES:
    return quantization.quantize(graphdef, params, name)
  if name == "float32":
    return graphdef, params
  cfg = model_cfg.with_dtype(name)
  graphdef, _ = Partitioner(mesh_lib.create_mesh((-1, 1, 1))).abstract_params(
      cfg.make_model())
  return graphdef, jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
  start = time.perf_counter()
  tokens = fn()
  return time.perf_counter() - start, tokens


def main(argv):
  del argv
  model = restore.random_params(
      _CONFIG.value, Partitioner(mesh_lib.create_mesh((-1, 1, 1))),
      vocab_size=_VOCAB.value, dtype="float32", seed=_SEED.value)
  model_cfg, graphdef, params = model.model_config, model.graphdef, model.params
  pieces = export.synthetic_vocabulary(_VOCAB.value)
  common = {"src_len": _SRC_LEN.value, "forced_len": _FORCED_LEN.value,
            "beam_size": _BEAM.value, "parameters": transformer.count_params(params),
            "cpu_count": os.cpu_count(), "git": provenance.git_commit(), "jax": jax.__version__,
            "ctranslate2": ctranslate2.__version__,
            "jax_device": jax.devices()[0].device_kind}

  variants = {name: _variant(name, model_cfg, graphdef, params)
              for name in _OURS.value}
  with tempfile.TemporaryDirectory() as tmp:
    translators = {}
    for quantization in _QUANTIZATIONS.value:
      directory = export.export_ctranslate2(
          graphdef, params, model_cfg, pieces, os.path.join(tmp, quantization),
          quantization=None if quantization == "float32" else quantization)
      for threads in map(int, _THREADS.value):
        translators[f"ctranslate2-{quantization}-t{threads}"] = ctranslate2.Translator(
            directory, device="cpu", compute_type=quantization, inter_threads=1,
            intra_threads=threads)

    for batch in map(int, _BATCH_SIZES.value):
      inputs = synthetic_sources(batch, _SRC_LEN.value, _VOCAB.value)
      engines = {}
      if "ours" in _ENGINES.value:
        engines.update({("ours" if name == "float32" else f"ours-{name}"): _ours(
            model_cfg, *variant, inputs) for name, variant in variants.items()})
      if "ctranslate2" in _ENGINES.value:
        engines.update({name: _ct2(t, pieces, inputs)
                        for name, t in translators.items()})
      first = {name: _timed(fn) for name, fn in engines.items()}  # Compiles ours.
      times = {name: [] for name in engines}
      names = list(engines)
      for r in range(_REPEATS.value):
        for name in names[r % len(names):] + names[:r % len(names)]:
          seconds, tokens = _timed(engines[name])
          if tokens != batch * _FORCED_LEN.value:
            raise RuntimeError(f"{name} wrote {tokens} tokens, not {batch} x "
                               f"{_FORCED_LEN.value}: not the same work.")
          times[name].append(seconds)
      ours = statistics.median(times["ours"]) if "ours" in times else None
      for name in names:
        median = statistics.median(times[name])
        line = {"engine": name, "batch_size": batch, "median_s": round(median, 4),
                "first_call_s": round(first[name][0], 3),
                "min_s": round(min(times[name]), 4),
                "p90_s": round(float(np.percentile(times[name], 90)), 4),
                "ms_per_sentence": round(1000 * median / batch, 2),
                "output_tokens_per_s": round(batch * _FORCED_LEN.value / median, 1),
                "repeats": len(times[name])}
        if not name.startswith("ours") and ours is not None:
          line["ours_over_ct2"] = round(ours / median, 2)
        print(json.dumps({**line, **common}), flush=True)


if __name__ == "__main__":
  app.run(main)
