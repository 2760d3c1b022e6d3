"""Inference from a training workdir: translate, evaluate, benchmark, average.

  python infer.py --mode=translate --workdir=DIR --input=en.txt --output=fr.txt
  python infer.py --mode=evaluate  --workdir=DIR --split=test_2016_flickr
  python infer.py --mode=evaluate  --workdir=DIR --input=src.en --reference=ref.fr
  python infer.py --mode=benchmark --config=configs/transformer_base.py
  python infer.py --mode=average   --workdir=DIR --average_last=5
"""
import dataclasses
import json
import sys

from absl import app
from absl import flags
from etils import epath
from flax import nnx
import jax
from ml_collections import config_flags

from inference import benchmark
from inference import translate
from models import transformer
from parallel import mesh as mesh_lib
from parallel import sharding

_MODE = flags.DEFINE_enum("mode", "translate",
                          ["translate", "evaluate", "benchmark", "average"],
                          "What to do.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json,"
                               " spm.model, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Read parameters from here instead of WORKDIR/checkpoints,"
    " e.g. WORKDIR/averaged_last5 written by --mode=average.")
_DTYPE = flags.DEFINE_string("dtype", None, "Inference dtype for parameters and compute"
                             " (e.g. bfloat16); default: the training config's.")
_INPUT = flags.DEFINE_string("input", "-", "Source file, one sentence per line; - is"
                             " stdin.")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file; - is stdout.")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference file for --mode=evaluate"
                                 " with --input.")
_SPLIT = flags.DEFINE_string("split", None, "TFDS split for --mode=evaluate, e.g."
                             " validation or test_2016_flickr.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam width; 1 is greedy.")
_ALPHA = flags.DEFINE_float("alpha", 0.6, "GNMT length penalty exponent.")
_MAX_LEN_A = flags.DEFINE_float("max_len_a", 1.5, "Output limit a * source_len + b.")
_MAX_LEN_B = flags.DEFINE_float("max_len_b", 10.0, "Output limit a * source_len + b.")
_NBEST = flags.DEFINE_integer("nbest", 1, "Hypotheses per line; > 1 writes"
                              " hyp<TAB>score pairs on the line.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per batch.")
_AVERAGE_LAST = flags.DEFINE_integer("average_last", 5, "Checkpoints to average.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "--mode=benchmark with random weights: the model config.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Benchmark batches.")
_SRC_LEN = flags.DEFINE_integer("src_len", 32, "Benchmark source length.")
_FORCED_LEN = flags.DEFINE_integer("forced_len", 64, "Benchmark output length, EOS"
                                   " suppressed; 0 lets the model stop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed benchmark calls per batch size.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Benchmark vocabulary (random"
                              " weights).")


def _workdir() -> str:
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir (a training workdir).")
  return _WORKDIR.value


def _translator(mesh):
  """(run(texts, name, progress) -> output lines, checkpoint step) from the flags."""
  return translate.make_translator(
      _workdir(), mesh, step=_STEP.value, checkpoint_dir=_CHECKPOINT_DIR.value,
      dtype=_DTYPE.value, beam_size=_BEAM.value, alpha=_ALPHA.value,
      max_len_a=_MAX_LEN_A.value, max_len_b=_MAX_LEN_B.value, nbest=_NBEST.value,
      batch_tokens=_BATCH_TOKENS.value)


def _benchmark(mesh):
  if _WORKDIR.value:
    from inference import restore  # pylint: disable=g-import-not-at-top,import-outside-toplevel  (grain)
    model = restore.restore_params(_workdir(), mesh, step=_STEP.value,
                                   checkpoint_dir=_CHECKPOINT_DIR.value,
                                   dtype=_DTYPE.value)
    graphdef, state = nnx.split(nnx.merge(model.graphdef, model.params, model.rest))
    model_cfg = model.model_config
  elif _CONFIG.value is not None:
    model_cfg = transformer.TransformerConfig.from_config(_CONFIG.value.model,
                                                          _VOCAB.value)
    if _DTYPE.value:
      model_cfg = dataclasses.replace(model_cfg, dtype=_DTYPE.value,
                                      param_dtype=_DTYPE.value)
    graphdef, state = benchmark.random_model(model_cfg)
  else:
    raise app.UsageError("--mode=benchmark needs --config (random weights) or"
                         " --workdir (a checkpoint).")
  params = sum(x.size for x in jax.tree.leaves(state.filter(nnx.Param)))
  with sharding.use_mesh(mesh):
    for result in benchmark.run(
        graphdef, state, vocab_size=model_cfg.vocab_size,
        batch_sizes=[int(b) for b in _BATCH_SIZES.value], src_len=_SRC_LEN.value,
        forced_len=_FORCED_LEN.value or None, beam_size=_BEAM.value,
        alpha=_ALPHA.value, max_decode_len=max(_FORCED_LEN.value, 2 * _SRC_LEN.value),
        repeats=_REPEATS.value, input_sharding=sharding.batch_sharding(mesh)):
      print(json.dumps({**result, "parameters": params, "dtype": model_cfg.dtype,
                        "device": jax.devices()[0].device_kind,
                        "num_devices": jax.device_count(), "jax": jax.__version__}),
            flush=True)


def _write(lines, path):
  text = "".join(line + "\n" for line in lines)
  if path == "-":
    sys.stdout.write(text)
  else:
    epath.Path(path).write_text(text)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  mesh = mesh_lib.create_mesh((-1, 1, 1))
  if _MODE.value == "benchmark":
    _benchmark(mesh)
  elif _MODE.value == "average":
    from inference import restore  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    print(restore.average_checkpoints(_workdir(), mesh, _AVERAGE_LAST.value))
  elif _MODE.value == "translate":
    name = "<stdin>" if _INPUT.value == "-" else _INPUT.value
    data = (sys.stdin.buffer.read() if _INPUT.value == "-"
            else epath.Path(_INPUT.value).read_bytes())
    run, _ = _translator(mesh)
    _write(run(translate.read_lines(data, name), name, _INPUT.value != "-"),
           _OUTPUT.value)
  else:
    from inference import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel  (TFDS)
    run, step = _translator(mesh)
    result = evaluate.evaluate(run, _workdir(), step=step, split=_SPLIT.value,
                               source=_INPUT.value, reference=_REFERENCE.value,
                               output=_OUTPUT.value)
    print(json.dumps({**result, "beam_size": _BEAM.value, "alpha": _ALPHA.value}))


if __name__ == "__main__":
  app.run(main)
