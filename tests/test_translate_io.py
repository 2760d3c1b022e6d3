"""Reliability of the test setup and of infer.py's text in/out: a private JAX cache,
one output line per input line, invisible-only lines, UTF-8 stdout, early output-path
checks, capped batch rows, and translating in chunks."""
import io
import os
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from inference import bucketing
from inference import compile_cache
from inference import text_io
from inference.decoder import DecodeSettings
from inference.translator import Translator
from tests.conftest import REPO


def test_jax_cache_dir_is_private_to_the_user():
  path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  info = os.lstat(path)
  assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
  assert not info.st_mode & 0o077, oct(info.st_mode)
  assert os.path.dirname(os.path.abspath(path)) != tempfile.gettempdir()


def test_shared_or_foreign_cache_dir_is_not_used(tmp_path):
  fresh = tmp_path / "a" / "cache"
  assert compile_cache.private_dir(str(fresh)) == str(fresh)
  assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
  shared = tmp_path / "shared"
  shared.mkdir()
  shared.chmod(0o777)  # World-writable: anyone could plant compiled programs.
  assert compile_cache.private_dir(str(shared)) is None
  link = tmp_path / "link"
  link.symlink_to(fresh)
  assert compile_cache.private_dir(str(link)) is None
  not_dir = tmp_path / "file"
  not_dir.write_text("")
  assert compile_cache.private_dir(str(not_dir)) is None


class _FakeTokenizer:
  """One id per word; every output decodes to `decoded`; records what it encodes."""

  def __init__(self, decoded="a\nb\tc\r"):
    self.decoded = decoded
    self.encoded = []

  def encode(self, text):
    self.encoded.append(text)
    return [5] * len(text.split())

  def decode(self, ids):
    del ids
    return self.decoded


def _fake_decode(inputs, nbest=2):
  rows = inputs.shape[0]
  return (np.full((rows, nbest, 3), 5, np.int32),
          np.zeros((rows, nbest), np.float32))


class _FakeDecoder:
  """A `Decoder` whose every call answers `_fake_decode`'s n-best rows."""
  settings, max_len, nbest = DecodeSettings(), 64, 2

  def bind(self, graphdef, params):
    del graphdef, params
    return lambda inputs, settings=None, nbest=None: _fake_decode(inputs, nbest)


def test_hypotheses_never_hold_newline_carriage_return_or_tab():
  translator = Translator(None, None, _FakeTokenizer(), _FakeDecoder(),
                          batch_tokens=64)
  translations = translator.translate(["A dog.", "", "Two cats run."])
  assert [t.text for t in translations] == ["a b c ", "", "a b c "]
  nbest = [t.line(2) for t in translations]
  assert nbest[0].split("\t") == ["a b c ", "0.0000", "a b c ", "0.0000"]
  assert not any(c in line for line in nbest for c in "\n\r")


def test_lines_of_only_bom_or_zero_width_characters_are_empty():
  tokenizer = _FakeTokenizer()
  texts = ["\ufeff", "\u200b\u200c \u200d\u2060", " \ufeff\t", "\ufeffA dog.\u200b",
           "a\u200db"]
  sources = bucketing.tokenize(texts, tokenizer, max_len=64, name="x")
  assert [s.ids for s in sources[:3]] == [[], [], []]
  assert all(s.ids for s in sources[3:])
  assert tokenizer.encoded == ["A dog.", "a\u200db"]  # Inner zero-width kept.


def test_batch_rows_are_capped_whatever_the_token_budget():
  sources = [bucketing.Source(i + 1, [5] * 3) for i in range(1010)]
  shapes, seen = [], []
  for batch, inputs in bucketing.batches(sources, batch_tokens=10**6):
    assert inputs.shape[0] <= bucketing.MAX_ROWS == 256
    shapes.append(inputs.shape)
    seen += [s.line for s in batch]
  assert sorted(seen) == list(range(1, 1011))
  shapes = [inputs.shape for _, inputs in
            bucketing.batches(sources, batch_tokens=10**6, max_rows=100)]
  assert shapes == [(100, 8)] * 10 + [(16, 8)]  # The last: 10 rows padded to 16.


def test_output_path_is_checked(tmp_path):
  text_io.check_output_path("-")
  text_io.check_output_path(str(tmp_path / "out.txt"))
  missing = tmp_path / "missing" / "out.txt"
  with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
    text_io.check_output_path(str(missing))
  with pytest.raises(ValueError, match=f"{tmp_path} is a directory"):
    text_io.check_output_path(str(tmp_path))


def _infer(*args, stdin=b"", env=None, code=None):
  command = ([sys.executable, "-c", code, *args] if code
             else [sys.executable, str(REPO / "infer.py"), *args])
  return subprocess.run(command, cwd=REPO, input=stdin, capture_output=True,
                        timeout=600, env=env)


@pytest.mark.slow
def test_bad_output_path_fails_before_the_model_loads(tmp_path):
  output = tmp_path / "missing" / "out.fr"
  result = _infer("--mode=translate", f"--workdir={tmp_path / 'no_run'}",
                  f"--output={output}", stdin=b"A dog.\n")
  assert result.returncode != 0
  stderr = result.stderr.decode()
  assert f"{output}" in stderr and "does not exist" in stderr, stderr[-3000:]
  assert "not a training workdir" not in stderr  # It never got to the run.


# infer.py with a translator that answers in non-ASCII text, without a checkpoint.
# ASCII source: Python decodes a -c command with the locale's encoding.
_FAKE_TRANSLATOR = """
import os
import sys
from absl import app
import infer
from inference.translator import Hypothesis, Translation

class FakeTranslator:
  calls = 0

  def translate(self, texts, **kwargs):
    FakeTranslator.calls += 1
    if FakeTranslator.calls == int(os.environ.get("FAKE_FAIL_AT_CALL", "0")):
      raise RuntimeError("fake failure")
    return [Translation([Hypothesis("Un caf\\u00e9 \\u00e0 " + t, 0.0)] if t else [])
            for t in texts]

infer._translator = FakeTranslator
sys.argv = ["infer.py", *sys.argv[1:]]
app.run(infer.main)
"""


def _c_locale_env():
  """LC_ALL=C without PYTHONIOENCODING. LC_ALL=C alone turns on Python's UTF-8 mode
  (PEP 540); PYTHONUTF8=0 keeps the locale's ASCII, as a non-UTF-8 locale would."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONIOENCODING", "PYTHONUTF8") and not k.startswith("LC_")}
  env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0")
  return env


@pytest.mark.slow
def test_output_is_utf8_whatever_the_locale(tmp_path):
  env = _c_locale_env()
  stdin = "Un chien 🐕.\n\nDeux.\n".encode()
  result = _infer("--mode=translate", stdin=stdin, env=env, code=_FAKE_TRANSLATOR)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  assert result.stdout.decode("utf-8").split("\n") == [
      "Un café à Un chien 🐕.", "", "Un café à Deux.", ""]
  output = tmp_path / "out.fr"
  result = _infer("--mode=translate", f"--output={output}", stdin=stdin, env=env,
                  code=_FAKE_TRANSLATOR)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  assert output.read_text(encoding="utf-8").startswith("Un café à Un chien 🐕.\n")


@pytest.mark.slow
def test_trained_model_translates_each_line_as_alone(trained_workdir):
  """Each output line is its input line's translation: lines of different lengths
  (batched and reordered by length inside) come back in their own places."""
  texts = ["Un café, s'il vous plaît.", "\ufeff", "A dog 🐕 runs.",
           "Two young men in white shirts are playing soccer on a green field near"
           " a crowd of people watching them.", "Hi."]
  stdin = "".join(t + "\n" for t in texts).encode()
  result = _infer("--mode=translate", f"--workdir={trained_workdir}", "--beam_size=1",
                  stdin=stdin, env=_c_locale_env())
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  lines = result.stdout.decode("utf-8").split("\n")
  assert lines[-1] == "" and len(lines) == len(texts) + 1
  translator = Translator.from_workdir(str(trained_workdir),
                                       decode_overrides={"beam_size": 1})
  alone = [translator.translate([text])[0].text for text in texts]
  assert lines[:-1] == alone
  # Not all alike (even an undertrained model's outputs differ in length), so a
  # swap of two lines shows.
  assert alone[1] == "" and len(set(alone)) >= 3, alone


def test_read_chunks_gives_the_lines_of_read_lines():
  data = "a\n\nb\r\nc\u2028d\n\ne".encode() + b"\xff\nlast"
  whole = text_io.read_lines(data, "x")
  chunks = list(text_io.read_chunks(io.BytesIO(data), 3, "x"))
  assert [first for first, _ in chunks] == [1, 4, 7]
  assert [text for _, texts in chunks for text in texts] == whole
  assert len(whole) == 7 and list(text_io.read_chunks(io.BytesIO(b""), 3, "x")) == []


@pytest.mark.slow
def test_translating_in_chunks_gives_the_same_lines(tmp_path):
  stdin = b"".join(f"Line {i}.\n".encode() for i in range(5)) + b"\n\xff bad\nlast"
  outputs = {}
  for size in (3, 100):  # 8 lines: 3 chunks, or 1.
    output = tmp_path / f"out{size}.fr"
    result = _infer("--mode=translate", f"--output={output}", f"--buffer_size={size}",
                    stdin=stdin, code=_FAKE_TRANSLATOR)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "<stdin>:7: invalid UTF-8" in result.stderr.decode()  # Counted over chunks.
    outputs[size] = output.read_text(encoding="utf-8")
  assert outputs[3] == outputs[100]
  assert outputs[3].split("\n") == [f"Un café à Line {i}." for i in range(5)] + [
      "", "Un café à \ufffd bad", "Un café à last", ""]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out100.fr", "out3.fr"]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE((tmp_path / "out3.fr").stat().st_mode) == 0o666 & ~umask


@pytest.mark.slow
def test_a_failed_translation_leaves_the_output_file_as_it_was(tmp_path):
  output = tmp_path / "out.fr"
  output.write_text("old\n")
  env = {**os.environ, "FAKE_FAIL_AT_CALL": "2"}
  result = _infer("--mode=translate", f"--output={output}", "--buffer_size=2",
                  stdin=b"a\nb\nc\nd\n", env=env, code=_FAKE_TRANSLATOR)
  assert result.returncode != 0 and "fake failure" in result.stderr.decode()
  assert output.read_text() == "old\n"
  assert [p.name for p in tmp_path.iterdir()] == ["out.fr"]  # No temporary file left.
