"""The flags the inference scripts share, defined once, and what they build.

A script calls the `define_*` functions of the flag groups it takes, at import (before
absl parses the command line), and reads them back through the functions below:
infer.py and serve.py take `define_translator` and build a `translator`; export.py and
bench/decode.py take checkpoint or random weights (`checkpoint_or_random`).
Decode settings default to the run's `config.decode`; only the flags given on the
command line override it. Every numeric flag is checked when absl parses it (bounds
and finiteness, the allowed range in the message); the decode settings merged with
the run's config.decode are checked again before the model loads
(`checked_decode_settings`), with the same limits as training's config checks
(models/limits.py).
"""
import math

from absl import app
from absl import flags
from ml_collections import config_flags

from inference import bundle
from inference import compile_cache
from inference import decoder as decoder_lib
from inference import restore
from inference.decoder import DecodeSettings
from inference.translator import Translator
from inference.translator import inference_partitioner
from models import limits
from models import quantization
from parallel.sharding import Partitioner
from storage import layout

FLAGS = flags.FLAGS
_DECODE_FIELDS = ("beam_size", "alpha", "max_len_a", "max_len_b",
                  *decoder_lib.OPTIONAL_FIELDS)


def define_workdir() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir (config.json, spm.model,"
                      " checkpoints/); translating and serving also take a model"
                      " bundle (export.py --format=bundle).")


def define_checkpoint() -> None:
  """--workdir, --step and --checkpoint_dir: which parameters to restore."""
  define_workdir()
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
  flags.DEFINE_string(
      "checkpoint_dir", None, "Read parameters from here instead of"
      " WORKDIR/checkpoints, e.g. WORKDIR/averaged_last5 written by average.py.")


def define_precision() -> None:
  """--dtype and --quantize: how the restored parameters compute."""
  flags.DEFINE_string("dtype", None, "Inference dtype for parameters and compute"
                      " (e.g. bfloat16); default: the training config's.")
  flags.DEFINE_enum(
      "quantize", "none", ["none", *quantization.MODES], "int8 weights, per output"
      " channel, made at load (models/quantization.py): 'int8' also quantizes"
      " activations per row (int8 dots: the fast path on CPU); 'int8_weights' is"
      " weight-only (for GPU/TPU).")


def _define_finite_float(name: str, default: float, help_text: str) -> None:
  """A float flag >= 0 that must also be finite (absl's bounds let NaN through)."""
  flags.DEFINE_float(name, default, help_text, lower_bound=0.0)
  flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                           message=f"--{name} must be a finite number >= 0.")


def define_decode(lengths: bool = True) -> None:
  """--beam_size, --alpha and (with `lengths`) --max_len_a, --max_len_b and the
  optional rules (--min_decoding_length, --max_decoding_length,
  --no_repeat_ngram_size)."""
  defaults = DecodeSettings()
  flags.DEFINE_integer("beam_size", defaults.beam_size, "Beam width; 1 is greedy."
                       f" At most {limits.MAX_BEAM_SIZE}. Default: the run's"
                       " config.decode.", lower_bound=1,
                       upper_bound=limits.MAX_BEAM_SIZE)
  _define_finite_float("alpha", defaults.alpha, "GNMT length penalty exponent (0:"
                       " none). Default: the run's config.decode.")
  if lengths:
    for field in ("max_len_a", "max_len_b"):
      _define_finite_float(field, getattr(defaults, field), "Output limit"
                           " a * source_len + b tokens (not both 0). Default: the"
                           " run's config.decode.")
    flags.DEFINE_integer("min_decoding_length", defaults.min_decoding_length,
                         "Tokens an output has at least, EOS not counted (EOS is"
                         " barred before; 0 allows empty outputs).", lower_bound=0)
    flags.DEFINE_integer("max_decoding_length", None, "Tokens an output has at most,"
                         " EOS included, whatever a * source_len + b says; default:"
                         " no such cap.", lower_bound=1)
    flags.DEFINE_integer("no_repeat_ngram_size", defaults.no_repeat_ngram_size,
                         "No n-gram of this many tokens appears twice in an output"
                         " (0: off).", lower_bound=0)


def define_sampling() -> None:
  """--num_samples, --sampling_topk, --sampling_topp, --sampling_temperature, --seed:
  random sampling instead of the beam search (docs/decoding.md)."""
  defaults = DecodeSettings()
  flags.DEFINE_integer("num_samples", defaults.num_samples, "Outputs drawn at random"
                       " per line instead of the beam search (0: beam search; any"
                       " other --sampling_* flag alone draws one). More than one:"
                       " hyp<TAB>score pairs on the line.", lower_bound=0,
                       upper_bound=decoder_lib.MAX_SAMPLES)
  flags.DEFINE_integer("sampling_topk", defaults.sampling_topk, "Draw among the k"
                       " most likely tokens (0: all; 1: greedy).", lower_bound=0)
  flags.DEFINE_float("sampling_topp", defaults.sampling_topp, "Draw within the"
                     " smallest set of likeliest tokens of this probability (1: no"
                     " cut).", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_float("sampling_temperature", defaults.sampling_temperature,
                     "Divides the logits before drawing (< 1: sharper).",
                     lower_bound=0.0)
  flags.DEFINE_integer("seed", defaults.seed, "Samples are a function of the seed"
                       " and each line's own text: the same seed gives the same"
                       " output, whatever the batch.", lower_bound=0,
                       upper_bound=2**32 - 1)


def define_compilation_cache() -> None:
  flags.DEFINE_string(
      "compilation_cache_dir", None, "JAX persistent compilation cache, so a later run"
      " loads compiled programs instead of compiling; created private (0700)."
      " Default: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/nmt-enfr/jax; empty: no"
      " cache.")


def define_random_weights() -> None:
  """--config and --vocab_size: a model with random weights, when there is no run."""
  config_flags.DEFINE_config_file(
      "config", None, "Without --workdir: the config whose model gets random weights.")
  flags.DEFINE_integer("vocab_size", 32000, "Vocabulary of the random-weights model.")


def define_translator(batch_tokens: bool = True) -> None:
  """Every flag `translator()` reads; `batch_tokens` adds --batch_tokens."""
  define_checkpoint()
  define_precision()
  define_decode()
  flags.DEFINE_integer("nbest", 1, "Hypotheses per line, at most --beam_size; > 1"
                       " writes hyp<TAB>score pairs on the line.", lower_bound=1)
  flags.DEFINE_boolean("return_token_scores", False, "Write each hypothesis as"
                       " hyp<TAB>score<TAB>token log-probabilities (space-separated,"
                       " EOS's last when the output ends with it).")
  flags.DEFINE_integer("return_alternatives", 0, "With the token scores, the N"
                       " likeliest tokens at each position of each hypothesis, as a"
                       " further field: id:logp,id:logp,... per position,"
                       " space-separated (0: none).", lower_bound=0,
                       upper_bound=decoder_lib.MAX_ALTERNATIVES)
  flags.DEFINE_boolean("return_alignment", False, "Also write each hypothesis's"
                       " source-target alignment (Pharaoh i-j pairs over the model's"
                       " tokens, from cross-attention) as a last tab field.")
  flags.DEFINE_integer("alignment_layer", -1, "The decoder layer whose"
                       " cross-attention (heads averaged) gives the alignment; -1:"
                       " the last.")
  flags.DEFINE_boolean("use_shortlist", False, "Rank only each sentence's"
                       " shortlisted target tokens (WORKDIR/shortlist.npz, built by"
                       " shortlist.py; CTranslate2's use_vmap): faster, scores"
                       " normalised over the shortlist.")
  define_sampling()
  if batch_tokens:
    flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per batch.",
                         lower_bound=1)
  flags.DEFINE_integer("max_source_len", None, "Tokens a sentence is cut to; default"
                       " (and at most) the model's limit. Fewer means fewer shapes to"
                       " compile.", lower_bound=1)
  define_compilation_cache()


def workdir(job: str) -> str:
  """--workdir; a usage error naming `job` (e.g. '--mode=translate') without it."""
  if not FLAGS.workdir:
    raise app.UsageError(f"{job} needs --workdir (a training workdir).")
  return FLAGS.workdir


def quantize() -> str | None:
  return None if FLAGS.quantize == "none" else FLAGS.quantize


def decode_overrides() -> dict:
  """The decode-setting flags given on the command line, by DecodeSettings field."""
  return {field: FLAGS[field].value for field in _DECODE_FIELDS
          if field in FLAGS and FLAGS[field].present}


def decode_settings(config) -> DecodeSettings:
  """`config.decode` (None: the defaults) with the flags given overriding it.

  A setting that cannot decode (e.g. --max_len_a=0 with --max_len_b=0, or a run's
  config.decode.alpha of NaN) is a usage error naming the flag and the config field.
  """
  settings = DecodeSettings.from_config(
      None if config is None else config.get("decode"), **decode_overrides())
  problems = limits.decode_problems(settings.beam_size, settings.alpha,
                                    settings.max_len_a, settings.max_len_b)
  problems += decoder_lib.setting_problems(settings)
  if problems:
    given = decode_overrides()

    def where(field):
      return (f"--{field}={getattr(settings, field)!r}" if field in given else
              f"config.decode.{field}={getattr(settings, field)!r} of the run"
              f" (override it with --{field})")
    raise app.UsageError("; ".join(f"{where(field)}: must be {rule}"
                                   for field, rule in problems) + ".")
  if "nbest" in FLAGS and not settings.samples and FLAGS.nbest > settings.beam_size:
    raise app.UsageError(f"--nbest={FLAGS.nbest}: must be <= the beam size"
                         f" ({settings.beam_size}); raise --beam_size or lower"
                         " --nbest.")
  return settings


def enable_compilation_cache() -> None:
  compile_cache.enable(FLAGS.compilation_cache_dir)


def translator(job: str) -> Translator:
  """The Translator of the `define_translator` flags, for `job` (error messages).

  --workdir may be a model bundle (export.py --format=bundle): it holds one set of
  float32 or int8 weights, so the flags that choose them are refused there.
  """
  batching = {"batch_tokens": FLAGS.batch_tokens} if "batch_tokens" in FLAGS else {}
  if bundle.is_bundle(workdir(job)):
    chosen = [f"--{name}" for name in ("step", "checkpoint_dir", "dtype", "quantize")
              if FLAGS[name].present]
    if chosen:
      raise app.UsageError(f"--workdir={FLAGS.workdir} is a model bundle, which holds"
                           f" one set of weights: drop {', '.join(chosen)} (export"
                           " another bundle for other weights).")
    decode_settings({"decode": bundle.read_info(FLAGS.workdir)["decode"]})
    return Translator.from_bundle(
        FLAGS.workdir, decode_overrides=decode_overrides(), nbest=FLAGS.nbest,
        max_len=FLAGS.max_source_len, **batching)
  decode_settings(layout.read_config(workdir(job)))  # Before the model loads.
  return Translator.from_workdir(
      workdir(job), step=FLAGS.step, checkpoint_dir=FLAGS.checkpoint_dir,
      dtype=FLAGS.dtype, quantize=quantize(), decode_overrides=decode_overrides(),
      nbest=FLAGS.nbest, max_len=FLAGS.max_source_len, **batching)


def checkpoint_or_random(job: str, quantize_mode: str | None = None
                         ) -> tuple[object, Partitioner, restore.Restored]:
  """(config, partitioner, model): the --workdir checkpoint, or --config's model with
  random weights (`define_checkpoint`, `define_random_weights`, `define_precision`
  if the script takes --dtype); `quantize_mode` as `restore.restore_params` takes it.
  """
  dtype = FLAGS.dtype if "dtype" in FLAGS else None
  if FLAGS.workdir:
    config = layout.read_config(FLAGS.workdir)
    partitioner = inference_partitioner(config)
    return config, partitioner, restore.restore_params(
        FLAGS.workdir, partitioner, step=FLAGS.step,
        checkpoint_dir=FLAGS.checkpoint_dir, dtype=dtype, quantize=quantize_mode)
  if FLAGS.config is None:
    raise app.UsageError(f"{job} needs --workdir (a checkpoint) or --config (random"
                         " weights).")
  partitioner = inference_partitioner(FLAGS.config)
  return FLAGS.config, partitioner, restore.random_params(
      FLAGS.config, partitioner, vocab_size=FLAGS.vocab_size, dtype=dtype,
      quantize=quantize_mode)
