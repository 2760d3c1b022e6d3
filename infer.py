"""Inference from a training workdir: translate, evaluate, score, serve, benchmark, ...

  python infer.py --mode=translate --workdir=DIR --input=en.txt --output=fr.txt
  python infer.py --mode=score     --workdir=DIR --input=en.txt --target=fr.txt
  python infer.py --mode=serve     --workdir=DIR --port=8080
  python infer.py --mode=evaluate  --workdir=DIR --split=test_2016_flickr
  python infer.py --mode=evaluate  --workdir=DIR --input=src.en --reference=ref.fr
  python infer.py --mode=benchmark --config=configs/transformer_base.py
  python infer.py --mode=average   --workdir=DIR --average_last=5
  python infer.py --mode=export    --workdir=DIR --format=ctranslate2 --output=ct2_dir
"""
import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile

from absl import app
from absl import flags
from etils import epath
import jax
from ml_collections import config_flags

from bench import decode as decode_bench
from data import tokenizer as tokenizer_lib
from inference import compile_cache
from inference import evaluate
from inference import export as export_lib
from inference import restore
from inference import server
from inference import translate
from inference.translator import Translator
from inference.translator import inference_partitioner
from models import quantization
from models import transformer
from parallel.sharding import Partitioner
from storage import layout

_MODE = flags.DEFINE_enum("mode", "translate",
                          ["translate", "evaluate", "score", "serve", "benchmark",
                           "average", "export"], "What to do.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json,"
                               " spm.model, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Read parameters from here instead of WORKDIR/checkpoints,"
    " e.g. WORKDIR/averaged_last5 written by --mode=average.")
_DTYPE = flags.DEFINE_string("dtype", None, "Inference dtype for parameters and compute"
                             " (e.g. bfloat16); default: the training config's.")
_QUANTIZE = flags.DEFINE_enum(
    "quantize", "none", ["none", *quantization.MODES], "int8 weights, per output"
    " channel, made at load (models/quantization.py): 'int8' also quantizes"
    " activations per row (int8 dots: the fast path on CPU); 'int8_weights' is"
    " weight-only (for GPU/TPU). Translate, evaluate, score, serve and benchmark.")
_INPUT = flags.DEFINE_string("input", "-", "Source file, one sentence per line; - is"
                             " stdin.")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file; - is stdout.")
_TARGET = flags.DEFINE_string("target", None, "--mode=score: translations to score,"
                              " line-aligned with --input; without it each --input"
                              " line is source<TAB>target.")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference file for --mode=evaluate"
                                 " with --input.")
_SPLIT = flags.DEFINE_string("split", None, "TFDS split for --mode=evaluate, e.g."
                             " validation or test_2016_flickr.")
# Decode settings: defaults from the run's config.decode with --workdir, else these.
_DEFAULTS = translate.DecodeSettings()
_BEAM = flags.DEFINE_integer("beam_size", _DEFAULTS.beam_size, "Beam width; 1 is"
                             " greedy. Default: the run's config.decode.")
_ALPHA = flags.DEFINE_float("alpha", _DEFAULTS.alpha, "GNMT length penalty exponent."
                            " Default: the run's config.decode.")
_MAX_LEN_A = flags.DEFINE_float("max_len_a", _DEFAULTS.max_len_a, "Output limit"
                                " a * source_len + b. Default: the run's config.decode.")
_MAX_LEN_B = flags.DEFINE_float("max_len_b", _DEFAULTS.max_len_b, "Output limit"
                                " a * source_len + b. Default: the run's config.decode.")
_NBEST = flags.DEFINE_integer("nbest", 1, "Hypotheses per line; > 1 writes"
                              " hyp<TAB>score pairs on the line.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per batch.")
_BUFFER_SIZE = flags.DEFINE_integer("buffer_size", 2000, "--mode=translate: lines read,"
                                    " translated and written at a time, so memory"
                                    " stays bounded and output appears as it goes.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "JAX persistent compilation cache, so a later run"
    " loads compiled programs instead of compiling; created private (0700). Default:"
    " $JAX_COMPILATION_CACHE_DIR, else ~/.cache/nmt-enfr/jax; empty: no cache.")
_MAX_SOURCE_LEN = flags.DEFINE_integer("max_source_len", None, "Tokens a sentence is"
                                       " cut to; default (and at most) the model's"
                                       " limit. Fewer means fewer shapes to compile.")
# --mode=serve.
_SERVE_DEFAULTS = server.ServerConfig()
_HOST = flags.DEFINE_string("host", "127.0.0.1", "--mode=serve: address to bind;"
                            " 0.0.0.0 serves other machines too.")
_PORT = flags.DEFINE_integer("port", 8080, "--mode=serve: TCP port.")
_MAX_BATCH_TOKENS = flags.DEFINE_integer(
    "max_batch_tokens", _SERVE_DEFAULTS.max_batch_tokens, "--mode=serve: source tokens"
    " per device batch, padding included; each bucket's batch shapes compile at"
    " warm-up.")
_MAX_BATCH_WAIT_MS = flags.DEFINE_float(
    "max_batch_wait_ms", _SERVE_DEFAULTS.max_batch_wait_ms, "--mode=serve: how long a"
    " sentence waits for batch mates before its batch is sent anyway.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue_sentences",
                                  _SERVE_DEFAULTS.max_queue_sentences, "--mode=serve:"
                                  " sentences waiting; beyond it requests get 503.")
_MAX_REQUEST = flags.DEFINE_integer("max_request_sentences",
                                    _SERVE_DEFAULTS.max_request_sentences,
                                    "--mode=serve: sentences per request.")
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", _SERVE_DEFAULTS.max_body_bytes,
                                 "--mode=serve: request body size; beyond it 413.")
_TIMEOUT = flags.DEFINE_float("request_timeout_s", _SERVE_DEFAULTS.request_timeout_s,
                              "--mode=serve: a request not answered by then gets 504.")
_WARMUP = flags.DEFINE_bool("warmup", True, "--mode=serve: compile every batch shape"
                            " before /healthz reports ready.")
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
_FORMAT = flags.DEFINE_enum("format", "ctranslate2", ["ctranslate2"],
                            "--mode=export: the format written to the --output dir.")
_QUANTIZATION = flags.DEFINE_string("quantization", None, "--mode=export: weight type"
                                    " of the exported model, e.g. int8; default"
                                    " float32.")


def _workdir() -> str:
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir (a training workdir).")
  return _WORKDIR.value


def _decode_flags() -> dict:
  """The decode-setting flags given on the command line."""
  return {field: flag.value for field, flag in (
      ("beam_size", _BEAM), ("alpha", _ALPHA), ("max_len_a", _MAX_LEN_A),
      ("max_len_b", _MAX_LEN_B)) if flags.FLAGS[flag.name].present}


def _settings(config=None) -> translate.DecodeSettings:
  """The run's config.decode (or the defaults), with the flags given overriding it."""
  return dataclasses.replace(translate.DecodeSettings.from_config(
      None if config is None else config.get("decode")), **_decode_flags())


def _quantize() -> str | None:
  return None if _QUANTIZE.value == "none" else _QUANTIZE.value


def _translator() -> Translator:
  return Translator.from_workdir(
      _workdir(), step=_STEP.value, checkpoint_dir=_CHECKPOINT_DIR.value,
      dtype=_DTYPE.value, quantize=_quantize(), decode_overrides=_decode_flags(),
      nbest=_NBEST.value, batch_tokens=_BATCH_TOKENS.value,
      max_len=_MAX_SOURCE_LEN.value)


@dataclasses.dataclass(frozen=True)
class _Model:
  """The parameters that --mode=benchmark and --mode=export work on."""
  config: object  # The run's config (--workdir) or the --config file's.
  partitioner: Partitioner
  model_config: transformer.TransformerConfig
  graphdef: object
  params: object


def _checkpoint_or_random(mode: str, quantize: str | None = None) -> _Model:
  """A workdir checkpoint (--workdir), or random weights of --config's model."""
  if _WORKDIR.value:
    config = layout.read_config(_workdir())
    partitioner = inference_partitioner(config)
    model = restore.restore_params(_workdir(), partitioner, step=_STEP.value,
                                   checkpoint_dir=_CHECKPOINT_DIR.value,
                                   dtype=_DTYPE.value, quantize=quantize)
    return _Model(config, partitioner, model.model_config, model.graphdef,
                  model.params)
  if _CONFIG.value is None:
    raise app.UsageError(f"--mode={mode} needs --workdir (a checkpoint) or --config"
                         " (random weights).")
  config = _CONFIG.value
  partitioner = inference_partitioner(config)
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=_VOCAB.value,
      pad_id=tokenizer_lib.PAD_ID).with_dtype(_DTYPE.value)
  graphdef, params = quantization.quantize(
      *partitioner.init_params(model_cfg.make_model()), quantize)
  return _Model(config, partitioner, model_cfg, graphdef, params)


def _benchmark():
  m = _checkpoint_or_random("benchmark", _quantize())
  config, partitioner, model_cfg = m.config, m.partitioner, m.model_config
  graphdef, params = m.graphdef, m.params
  settings = _settings(config)
  # Of the float model: a quantized one also holds scales (and a lookup table).
  parameters = transformer.count_params(
      partitioner.abstract_params(model_cfg.make_model())[1])
  for result in decode_bench.run(
      graphdef, params, partitioner, vocab_size=model_cfg.vocab_size,
      batch_sizes=[int(b) for b in _BATCH_SIZES.value], src_len=_SRC_LEN.value,
      forced_len=_FORCED_LEN.value or None, beam_size=settings.beam_size,
      alpha=settings.alpha, max_decode_len=max(_FORCED_LEN.value, 2 * _SRC_LEN.value),
      repeats=_REPEATS.value):
    print(json.dumps({**result, "parameters": parameters,
                      "dtype": model_cfg.dtype, "quantize": _QUANTIZE.value,
                      "weight_bytes": quantization.weight_bytes(params),
                      "device": jax.devices()[0].device_kind,
                      "num_devices": jax.device_count(), "jax": jax.__version__}),
          flush=True)


def _export():
  """Writes the model (a checkpoint, or random weights) as a CTranslate2 directory."""
  if _OUTPUT.value == "-":
    raise app.UsageError("--mode=export needs --output=DIR, the model directory.")
  if _quantize():
    raise app.UsageError("--mode=export takes --quantization=int8 (CTranslate2"
                         " quantizes the float weights itself), not --quantize.")
  m = _checkpoint_or_random("export")
  graphdef, params, model_cfg = m.graphdef, m.params, m.model_config
  vocab = (layout.load_tokenizer(_workdir()) if _WORKDIR.value
           else export_lib.synthetic_vocabulary(_VOCAB.value))
  output = export_lib.export_ctranslate2(graphdef, params, model_cfg, vocab,
                                         _OUTPUT.value, quantization=_QUANTIZATION.value)
  print(json.dumps({"format": _FORMAT.value, "output": output,
                    "quantization": _QUANTIZATION.value,
                    "parameters": transformer.count_params(params)}))


@contextlib.contextmanager
def _open_output(path):
  """A binary stream for the output: stdout, or a temporary file renamed to `path`.

  The rename happens only once every line is written, so a failed run leaves no
  partial file (and an older output stays as it was). Remote paths are written at
  the end in one piece.
  """
  if path == "-":
    sys.stdout.flush()
    yield sys.stdout.buffer
    return
  if "://" in path:
    with contextlib.closing(io.BytesIO()) as buffer:
      yield buffer
      epath.Path(path).write_bytes(buffer.getvalue())
    return
  directory, base = os.path.split(os.path.abspath(path))
  fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # As an ordinary new file; mkstemp gives 0o600.
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temp)
    raise


def _translate():
  """--input to --output in chunks of --buffer_size lines, one output line per input.

  Output is UTF-8 whatever the locale's encoding.
  """
  try:  # Before the model loads: a bad --output fails at once.
    translate.check_output_path(_OUTPUT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if _BUFFER_SIZE.value < 1:
    raise app.UsageError(f"--buffer_size={_BUFFER_SIZE.value}: give 1 or more lines.")
  name = "<stdin>" if _INPUT.value == "-" else _INPUT.value
  translator = _translator()
  source = (contextlib.nullcontext(sys.stdin.buffer) if _INPUT.value == "-"
            else epath.Path(_INPUT.value).open("rb"))
  with source as lines, _open_output(_OUTPUT.value) as out:
    for first_line, texts in translate.read_chunks(lines, _BUFFER_SIZE.value, name):
      translations = translator.translate(texts, name=name, first_line=first_line,
                                          progress=_INPUT.value != "-")
      out.write("".join(t.line(_NBEST.value) + "\n"
                        for t in translations).encode("utf-8"))
      out.flush()


def _evaluate():
  translator = _translator()
  if _SPLIT.value:
    name, (sources, references) = _SPLIT.value, evaluate.read_split(_workdir(),
                                                                      _SPLIT.value)
  elif _INPUT.value != "-" and _REFERENCE.value:
    name = epath.Path(_INPUT.value).name
    sources, references = evaluate.read_file_pair(_INPUT.value, _REFERENCE.value)
  else:
    raise app.UsageError("--mode=evaluate needs --split, or --input and --reference"
                         " files.")
  output = (epath.Path(_workdir()) / "hypotheses" / f"{name}.step{translator.step}.txt"
            if _OUTPUT.value == "-" else epath.Path(_OUTPUT.value))
  result = evaluate.evaluate(translator, name, sources, references, output,
                             nbest=_NBEST.value)
  print(json.dumps({**result, **dataclasses.asdict(translator.decoder.settings)}))


def _score():
  """Teacher-forced log-probabilities: one `score<TAB>token scores` line per pair.

  Pairs from --input and --target, or --input lines of source<TAB>target.
  """
  try:
    translate.check_output_path(_OUTPUT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  name = "<stdin>" if _INPUT.value == "-" else _INPUT.value
  if _TARGET.value:
    if _INPUT.value == "-":
      raise app.UsageError("--target needs --input to be a file, not stdin.")
    sources, targets = evaluate.read_file_pair(_INPUT.value, _TARGET.value)
  else:
    lines = translate.read_lines(sys.stdin.buffer.read() if _INPUT.value == "-"
                                 else epath.Path(_INPUT.value).read_bytes(), name)
    if bad := [i for i, line in enumerate(lines, 1) if line.count("\t") != 1]:
      raise app.UsageError(f"{name}: lines {bad[:5]} are not source<TAB>target; give"
                           " one tab per line, or --target=FILE.")
    pairs = [line.split("\t") for line in lines]
    sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
  scores = _translator().score(sources, targets, name=name)
  with _open_output(_OUTPUT.value) as out:
    out.write("".join(s.line() + "\n" for s in scores).encode("utf-8"))


def _serve():
  translator = _translator()
  server.serve(translator, server.ServerConfig(
      max_batch_tokens=_MAX_BATCH_TOKENS.value,
      max_batch_wait_ms=_MAX_BATCH_WAIT_MS.value,
      max_queue_sentences=_MAX_QUEUE.value,
      max_request_sentences=_MAX_REQUEST.value, max_body_bytes=_MAX_BODY.value,
      request_timeout_s=_TIMEOUT.value, warmup=_WARMUP.value), _HOST.value, _PORT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  compile_cache.enable(_CACHE_DIR.value)
  if _MODE.value == "benchmark":
    _benchmark()
  elif _MODE.value == "export":
    _export()
  elif _MODE.value == "average":
    config = layout.read_config(_workdir())
    print(restore.average_checkpoints(_workdir(), inference_partitioner(config),
                                      _AVERAGE_LAST.value))
  elif _MODE.value == "translate":
    _translate()
  elif _MODE.value == "score":
    _score()
  elif _MODE.value == "serve":
    _serve()
  else:
    _evaluate()


if __name__ == "__main__":
  app.run(main)
