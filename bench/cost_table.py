"""What a translation costs: BLEU and decode latency of one model setting, one JSON line.

  python bench/cost_table.py --workdir=workdir/best --name=teacher --quantize=int8 \
      --output=costs.jsonl
  python bench/cost_table.py --workdir=workdir/best --engine=ctranslate2 \
      --compute_type=int8 --output=costs.jsonl
  python bench/cost_table.py --table=costs.jsonl     # the markdown table of all rows

A row: the run's averaged checkpoint (else its latest), with --dtype, --quantize,
--beam_size and --alpha; BLEU (`bleu_lc_tok`, sacreBLEU) and chrF on validation and
test_2016_flickr; then decode latency on the first --latency_sentences test
sentences, in order, in batches of exactly 1, 8 and 32 sentences (a batch is padded
to its longest sentence's bucket): every batch shape is compiled in a warm-up pass,
then --repeats timed passes, the median pass reported as ms per sentence and
sentences/s. `--engine=ctranslate2` exports the same checkpoint (stored and computed
in CTranslate2's own --compute_type) and runs its beam search with --intra_threads
(default: the cores) on the same sentences and max length; CTranslate2 normalises
scores by length**1 (its default), not GNMT's alpha, so its outputs can differ from
ours.
`--measure=bleu` or `latency` runs one half: BLEU needs no quiet machine, timings do.
"""
from collections.abc import Callable, Sequence
import json
import math
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from etils import epath

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from data import tokenizer as tokenizer_lib
from inference import bleu
from inference import bucketing
from inference import evaluate
from inference import export
from inference import restore
from inference.decoder import DecodeSettings
from inference.translator import Translator
from inference.translator import inference_partitioner
from models import quantization
from models import transformer
from storage import layout

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Default: WORKDIR/averaged_last<N> if there is one, else"
    " WORKDIR/checkpoints.")
_NAME = flags.DEFINE_string("name", None, "Row label; default: the workdir's name.")
_ENGINE = flags.DEFINE_enum("engine", "jax", ["jax", "ctranslate2"], "Decoder.")
_DTYPE = flags.DEFINE_string("dtype", None, "jax: compute dtype, e.g. bfloat16.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", *quantization.MODES],
                              "jax: int8 layers (models/quantization.py).")
_COMPUTE_TYPE = flags.DEFINE_string("compute_type", "int8", "ctranslate2: its"
                                    " quantization and compute type.")
_THREADS = flags.DEFINE_integer("intra_threads", os.cpu_count() or 1, "ctranslate2:"
                                " threads per batch (default: the cores; on 2 cores,"
                                " 1 thread is faster at batches 1 and 8).")
_BEAM = flags.DEFINE_integer("beam_size", None, "Default: the run's config.decode.")
_ALPHA = flags.DEFINE_float("alpha", None, "jax: GNMT length penalty; default: the"
                            " run's config.decode.")
_MEASURE = flags.DEFINE_list("measure", ["bleu", "latency"], "bleu, latency or both.")
_SPLITS = flags.DEFINE_list("splits", ["validation", "test_2016_flickr"],
                            "BLEU splits.")
_LATENCY_SPLIT = flags.DEFINE_string("latency_split", "test_2016_flickr",
                                     "Split whose first sentences are timed.")
_SENTENCES = flags.DEFINE_integer("latency_sentences", 256, "Sentences timed.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"],
                                 "Sentences per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes; the median is reported.")
_OUTPUT = flags.DEFINE_string("output", None, "Append the JSON line to this file too.")
_TABLE = flags.DEFINE_string("table", None, "Print the markdown table of a JSONL file"
                             " of rows (merged by name) and exit.")

# Translates a list of sentences as one batch; returns the output texts.
BatchFn = Callable[[Sequence[str]], list[str]]


def checkpoint_dir(workdir: str) -> str | None:
  """The averaged checkpoint a recipe scores (results.json), else None: the latest."""
  if _CHECKPOINT_DIR.value:
    return _CHECKPOINT_DIR.value
  averaged = layout.final_average_dir(workdir)
  return averaged and str(averaged)


def float_parameters(workdir: str) -> int:
  """Parameters of the trained model (a quantized one also holds scales)."""
  config = layout.read_config(workdir)
  return transformer.count_params(inference_partitioner(config).abstract_params(
      restore.model_config(workdir, config).make_model())[1])


def jax_engine(workdir: str, ckpt: str | None) -> tuple[BatchFn, BatchFn, dict]:
  """(translate all, translate one batch, row facts) for our beam search."""
  overrides = {"beam_size": _BEAM.value, "alpha": _ALPHA.value}  # None: the run's.
  translator = Translator.from_workdir(
      workdir, checkpoint_dir=ckpt, dtype=_DTYPE.value,
      quantize=None if _QUANTIZE.value == "none" else _QUANTIZE.value,
      decode_overrides=overrides)

  def translate_all(texts):
    return [t.text for t in translator.translate(texts, progress=True)]

  def translate_batch(texts):
    sources = translator.tokenize(texts)
    length = bucketing.bucket(max(len(s.ids) for s in sources))
    return [t.text for t in translator.translate_batch(
        sources, length, len(sources), translator.settings, 1)]

  precision = _QUANTIZE.value if _QUANTIZE.value != "none" else (
      _DTYPE.value or layout.read_config(workdir).model.dtype)
  return translate_all, translate_batch, {
      "engine": "jax", "precision": precision, "step": translator.step,
      "beam_size": translator.settings.beam_size, "alpha": translator.settings.alpha,
      "weight_bytes": quantization.weight_bytes(translator.params)}


def ct2_engine(workdir: str, ckpt: str | None) -> tuple[BatchFn, BatchFn, dict]:
  """The same checkpoint exported to CTranslate2, decoded with its beam search."""
  import ctranslate2  # pylint: disable=g-import-not-at-top
  config = layout.read_config(workdir)
  settings = DecodeSettings.from_config(config.get("decode"), beam_size=_BEAM.value)
  tokenizer = tokenizer_lib.load_from_workdir(workdir)
  model = restore.restore_params(workdir, inference_partitioner(config),
                                 checkpoint_dir=ckpt)
  directory = tempfile.mkdtemp(prefix="ct2-")
  export.export_ctranslate2(model.graphdef, model.params, model.model_config,
                            tokenizer, directory, quantization=_COMPUTE_TYPE.value)
  engine = ctranslate2.Translator(directory, device="cpu",
                                  compute_type=_COMPUTE_TYPE.value, inter_threads=1,
                                  intra_threads=_THREADS.value)
  pieces = export.vocabulary(tokenizer)
  index = {p: i for i, p in enumerate(pieces)}
  max_len = model.model_config.max_len

  def translate_batch(texts):
    sources = [[pieces[i] for i in tokenizer.encode(t)[:max_len - 1]] for t in texts]
    longest = max(len(s) for s in sources) + 1  # EOS, appended by the model.
    limit = min(max_len, math.floor(settings.max_len_a * longest + settings.max_len_b))
    results = engine.translate_batch(
        sources, beam_size=settings.beam_size, max_decoding_length=limit,
        min_decoding_length=1,
        suppress_sequences=[[pieces[tokenizer_lib.PAD_ID]]])
    return [tokenizer.decode([index[p] for p in r.hypotheses[0]]) for r in results]

  def translate_all(texts):
    return [line for i in range(0, len(texts), 64)
            for line in translate_batch(texts[i:i + 64])]

  return translate_all, translate_batch, {
      "engine": f"ctranslate2 {ctranslate2.__version__}",
      "precision": _COMPUTE_TYPE.value, "intra_threads": _THREADS.value,
      "step": model.step, "beam_size": settings.beam_size,
      "weight_bytes": sum(os.path.getsize(os.path.join(directory, f))
                          for f in os.listdir(directory))}


def latency(translate_batch: BatchFn, texts: Sequence[str], batch: int) -> dict:
  """Median seconds of `repeats` passes over `texts` in batches of `batch`."""
  chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
  for chunk in chunks:  # Warm-up: compiles every (batch, bucket) shape.
    translate_batch(chunk)
  passes = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for chunk in chunks:
      translate_batch(chunk)
    passes.append(time.perf_counter() - start)
  median = statistics.median(passes)
  return {f"b{batch}_ms_per_sentence": round(1000 * median / len(texts), 2),
          f"b{batch}_sentences_per_s": round(len(texts) / median, 1)}


def measure(argv) -> dict:
  del argv
  workdir = _WORKDIR.value
  ckpt = checkpoint_dir(workdir)
  make = jax_engine if _ENGINE.value == "jax" else ct2_engine
  translate_all, translate_batch, facts = make(workdir, ckpt)
  row = {"name": _NAME.value or epath.Path(workdir).name, **facts,
         "parameters": float_parameters(workdir),
         "checkpoint": ckpt or "latest", "cores": os.cpu_count()}
  if "bleu" in _MEASURE.value:
    for split in _SPLITS.value:
      sources, references = evaluate.read_split(workdir, split)
      scores = bleu.score(translate_all(sources), references)
      row.update({f"{split}_{k}": scores[k] for k in ("bleu_lc_tok", "sacrebleu",
                                                       "chrf")})
  if "latency" in _MEASURE.value:
    sources, _ = evaluate.read_split(workdir, _LATENCY_SPLIT.value)
    texts = [t for t in sources if t.strip()][:_SENTENCES.value]
    for batch in _BATCH_SIZES.value:
      row.update(latency(translate_batch, texts, int(batch)))
    row.update(latency_sentences=len(texts), repeats=_REPEATS.value)
  return row


# Columns of the markdown table: (header, row key, format).
COLUMNS = (
    ("model", "name", "{}"), ("engine", "engine", "{}"),
    ("precision", "precision", "{}"), ("beam", "beam_size", "{}"),
    ("parameters", "parameters", "{:,}"), ("weights MB", "weight_bytes", "{:.1f}"),
    ("val BLEU", "validation_bleu_lc_tok", "{:.2f}"),
    ("val sacreBLEU", "validation_sacrebleu", "{:.2f}"),
    ("test BLEU", "test_2016_flickr_bleu_lc_tok", "{:.2f}"),
    ("test sacreBLEU", "test_2016_flickr_sacrebleu", "{:.2f}"),
    ("ms/sent b1", "b1_ms_per_sentence", "{:.1f}"),
    ("ms/sent b8", "b8_ms_per_sentence", "{:.1f}"),
    ("sent/s b32", "b32_sentences_per_s", "{:.1f}"),
)


def table(path: str) -> str:
  """Rows of a JSONL file merged by name (a BLEU line and a latency line make one)."""
  rows: dict[str, dict] = {}
  for line in epath.Path(path).read_text().splitlines():
    if line.strip():
      row = json.loads(line)
      rows.setdefault(row["name"], {}).update(row)

  def cell(row, key, fmt):
    if key not in row:
      return "not measured"
    value = row[key] / 1e6 if key == "weight_bytes" else row[key]
    return fmt.format(value)
  lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(cell(r, k, f) for _, k, f in COLUMNS) + " |"
            for r in rows.values()]
  return "\n".join(lines)


def main(argv):
  if _TABLE.value:
    print(table(_TABLE.value))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (or --table=FILE).")
  row = measure(argv)
  line = json.dumps(row)
  print(line, flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
