"""Translate, evaluate or score with a trained model, text files in and out.

  python infer.py --mode=translate --workdir=DIR --input=en.txt --output=fr.txt
  python infer.py --mode=translate --workdir=DIR --input=en.txt --return_token_scores \
      --no_repeat_ngram_size=3 --min_decoding_length=2   # docs/decoding.md
  python infer.py --mode=translate --workdir=DIR --input=en.txt --target_prefix=fr.txt
  python infer.py --mode=translate --workdir=DIR --input=mono.txt --sampling_topk=10 \
      --seed=1 --output=synthetic.txt   # Back-translation (docs/decoding.md)
  python infer.py --mode=evaluate  --workdir=DIR --split=test_2016_flickr
  python infer.py --mode=evaluate  --workdir=DIR --input=src.en --reference=ref.fr
  python infer.py --mode=score     --workdir=DIR --input=en.txt --target=fr.txt

The other inference jobs have scripts of their own: serve.py (HTTP server),
export.py (CTranslate2 model), average.py (checkpoint averaging) and bench/decode.py
(decode latency).
"""
import contextlib
import dataclasses
import json

from absl import app
from absl import flags
from etils import epath

from cli import inference_flags
from cli import logs
from inference import evaluate
from inference import text_io
from inference.translator import Translator

inference_flags.define_translator()
_MODE = flags.DEFINE_enum("mode", "translate", ["translate", "evaluate", "score"],
                          "What to do.")
_INPUT = flags.DEFINE_string("input", text_io.STDIO, "Source file, one sentence per"
                             " line; - is stdin.")
_OUTPUT = flags.DEFINE_string("output", text_io.STDIO, "Output file; - is stdout.")
_TARGET = flags.DEFINE_string("target", None, "--mode=score: translations to score,"
                              " line-aligned with --input; without it each --input"
                              " line is source<TAB>target.")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference file for --mode=evaluate"
                                 " with --input.")
_SPLIT = flags.DEFINE_string("split", None, "TFDS split for --mode=evaluate, e.g."
                             " validation or test_2016_flickr.")
_TARGET_PREFIX = flags.DEFINE_string(
    "target_prefix", None, "--mode=translate: what each translation must start with,"
    " line-aligned with --input (an empty line: nothing). docs/decoding.md.")
_PREFIX_IN_INPUT = flags.DEFINE_boolean(
    "prefix_in_input", False, "--mode=translate: each --input line is"
    " source<TAB>target prefix (a line without a tab has no prefix).")
_BUFFER_SIZE = flags.DEFINE_integer("buffer_size", 2000, "--mode=translate: lines read,"
                                    " translated and written at a time, so memory"
                                    " stays bounded and output appears as it goes.")


def _translator() -> Translator:
  return inference_flags.translator(f"--mode={_MODE.value}")


def _check_paths(*input_flags: flags.FlagHolder) -> None:
  """Before the model loads: a missing input or a bad --output fails at once."""
  given = [f for f in input_flags if f.value is not None]
  try:
    for flag in given:
      text_io.check_input_path(flag.value, f"--{flag.name}")
    text_io.check_output_path(_OUTPUT.value, "--output",
                              inputs=tuple(f.value for f in given))
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def _chunks(lines, prefix_lines, name: str):
  """(first line, texts, target prefixes or None) of --input, chunk by chunk."""
  size = _BUFFER_SIZE.value
  if prefix_lines is not None:
    yield from text_io.read_prefixed_chunks(lines, prefix_lines, size, name,
                                            _TARGET_PREFIX.value)
    return
  for first_line, texts in text_io.read_chunks(lines, size, name):
    yield (first_line, *text_io.split_prefixes(texts)) if _PREFIX_IN_INPUT.value else (
        first_line, texts, None)


def _translate():
  """--input to --output in chunks of --buffer_size lines, one output line per input."""
  _check_paths(_INPUT, _TARGET_PREFIX)
  if _BUFFER_SIZE.value < 1:
    raise app.UsageError(f"--buffer_size={_BUFFER_SIZE.value}: give 1 or more lines.")
  if _TARGET_PREFIX.value and _PREFIX_IN_INPUT.value:
    raise app.UsageError("--target_prefix and --prefix_in_input both give prefixes;"
                         " choose one.")
  name = text_io.display_name(_INPUT.value)
  translator = _translator()
  nbest = flags.FLAGS.nbest
  token_scores = flags.FLAGS.return_token_scores or flags.FLAGS.return_alternatives
  with contextlib.ExitStack() as stack:
    lines = stack.enter_context(text_io.open_input(_INPUT.value))
    prefix_lines = (stack.enter_context(text_io.open_input(_TARGET_PREFIX.value))
                    if _TARGET_PREFIX.value else None)
    out = stack.enter_context(text_io.open_output(_OUTPUT.value))
    try:
      for first_line, texts, prefixes in _chunks(lines, prefix_lines, name):
        translations = translator.translate(texts, name=name, first_line=first_line,
                                            progress=_INPUT.value != text_io.STDIO,
                                            target_prefix=prefixes)
        # Every sample is shown: a sampled list may be longer than --nbest.
        out.write("".join(t.line(max(nbest, len(t.nbest)), token_scores) + "\n"
                          for t in translations).encode("utf-8"))
        out.flush()
    except ValueError as e:  # Files of different lengths.
      raise app.UsageError(str(e)) from e


def _evaluate():
  _check_paths(*(() if _SPLIT.value else (_INPUT, _REFERENCE)))
  translator = _translator()
  workdir = inference_flags.workdir("--mode=evaluate")
  if _SPLIT.value:
    name = _SPLIT.value
    sources, references = evaluate.read_split(workdir, _SPLIT.value)
  elif _INPUT.value != text_io.STDIO and _REFERENCE.value:
    name = epath.Path(_INPUT.value).name
    sources, references = evaluate.read_file_pair(_INPUT.value, _REFERENCE.value)
  else:
    raise app.UsageError("--mode=evaluate needs --split, or --input and --reference"
                         " files.")
  output = (epath.Path(workdir) / "hypotheses" / f"{name}.step{translator.step}.txt"
            if _OUTPUT.value == text_io.STDIO else epath.Path(_OUTPUT.value))
  result = evaluate.evaluate(translator, name, sources, references, output,
                             nbest=flags.FLAGS.nbest)
  print(json.dumps({**result, **dataclasses.asdict(translator.decoder.settings)}))


def _score():
  """Teacher-forced log-probabilities: one `score<TAB>token scores` line per pair.

  Pairs from --input and --target, or --input lines of source<TAB>target.
  """
  _check_paths(_INPUT, _TARGET)
  name = text_io.display_name(_INPUT.value)
  if _TARGET.value:
    if _INPUT.value == text_io.STDIO:
      raise app.UsageError("--target needs --input to be a file, not stdin.")
    sources, targets = evaluate.read_file_pair(_INPUT.value, _TARGET.value)
  else:
    with text_io.open_input(_INPUT.value) as f:
      lines = text_io.read_lines(f.read(), name)
    if bad := [i for i, line in enumerate(lines, 1) if line.count("\t") != 1]:
      raise app.UsageError(f"{name}: lines {bad[:5]} are not source<TAB>target; give"
                           " one tab per line, or --target=FILE.")
    pairs = [line.split("\t") for line in lines]
    sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
  scores = _translator().score(sources, targets, name=name)
  with text_io.open_output(_OUTPUT.value) as out:
    out.write("".join(s.line() + "\n" for s in scores).encode("utf-8"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  inference_flags.enable_compilation_cache()
  {"translate": _translate, "evaluate": _evaluate, "score": _score}[_MODE.value]()


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
