"""The optional decode rules through the Translator, the HTTP server and infer.py,
on the smoke model with random weights (tests/test_translator.py's workdir)."""
import os
import subprocess
import sys

import pytest

from inference import server
from inference.translator import Translator
from tests.conftest import REPO
from tests.test_server import _post, _Served
from tests.test_translator import random_workdir

TEXTS = ["A man in a blue shirt is riding a bike.", "", "Two dogs play.", "Hi"]


@pytest.fixture(scope="module")
def workdir(prepared, tmp_path_factory):
  return random_workdir(prepared, tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="module")
def translator(workdir):
  return Translator.from_workdir(str(workdir), max_len=16, batch_tokens=32)


def penalty(length, alpha):
  return ((5 + length) / 6) ** alpha


def repeats(ids, n):
  grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
  return len(grams) != len(set(grams))


def test_token_scores_sum_to_the_score_under_the_length_penalty(translator):
  results = translator.translate(TEXTS, beam_size=3, nbest=2, alpha=0.6,
                                 return_token_scores=True)
  assert results[1].nbest == []
  for r in (r for r in results if r.nbest):
    for h in r.nbest:
      assert len(h.token_scores) in (len(h.ids), len(h.ids) + 1)
      assert sum(h.token_scores) / penalty(len(h.token_scores), 0.6) == pytest.approx(
          h.score, abs=1e-4)
  plain = translator.translate(TEXTS, beam_size=3, nbest=2, alpha=0.6)
  assert [r.text for r in plain] == [r.text for r in results]
  assert all(h.token_scores == () for r in plain for h in r.nbest)


def test_length_and_repetition_rules_take_effect(translator):
  free = translator.translate(TEXTS, beam_size=2, return_token_scores=True)
  assert any(repeats(r.ids, 2) for r in free)  # A random model repeats itself.
  ruled = translator.translate(TEXTS, beam_size=2, no_repeat_ngram_size=2,
                               max_decoding_length=6, return_token_scores=True)
  assert not any(repeats(r.ids, 2) for r in ruled)
  assert all(len(r.nbest[0].token_scores) <= 6 for r in ruled if r.nbest)
  longer = translator.translate(TEXTS, beam_size=2, min_decoding_length=5)
  assert all(len(r.ids) >= 5 for r in longer if r.nbest)


@pytest.mark.parametrize("options, message", [
    ({"min_decoding_length": -1}, "min_decoding_length=-1 must be an integer >= 0"),
    ({"max_decoding_length": 0}, "max_decoding_length=0"),
    ({"min_decoding_length": 7, "max_decoding_length": 3}, "<= max_decoding_length"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size")])
def test_bad_rules_are_errors_naming_the_field(translator, options, message):
  with pytest.raises(ValueError, match=message):
    translator.translate(["a"], **options)
  with pytest.raises(TypeError, match="Unknown decode options"):
    translator.translate(["a"], min_length=2)


@pytest.fixture(scope="module")
def served(translator):
  served = _Served(server.make_app(translator, server.ServerConfig(
      batch_tokens=32, max_batch_wait_ms=5, warmup=False)))
  served.wait_ready()
  yield served
  served.close()


def test_server_returns_token_scores_and_applies_the_rules(served, translator):
  request = {"text": TEXTS, "beam_size": 2, "nbest": 2, "no_repeat_ngram_size": 2,
             "max_decoding_length": 6, "return_token_scores": True}
  status, body = _post(served.url + "/v1/translate", request)
  assert status == 200, body
  offline = translator.translate(TEXTS, beam_size=2, nbest=2, no_repeat_ngram_size=2,
                                 max_decoding_length=6, return_token_scores=True)
  for got, want in zip(body["translations"], offline):
    assert got["tokens"] == list(want.ids)
    assert got["token_scores"] == pytest.approx(list(want.nbest[0].token_scores)
                                                if want.nbest else [], abs=1e-5)
    for h, w in zip(got.get("nbest", []), want.nbest):
      assert h["token_scores"] == pytest.approx(list(w.token_scores), abs=1e-5)
    assert len(got.get("nbest", [])) == len(want.nbest)
  status, body = _post(served.url + "/v1/translate", {"text": TEXTS[:1]})
  assert "token_scores" not in body["translations"][0]


@pytest.mark.parametrize("payload, message", [
    ({"min_decoding_length": -2}, "min_decoding_length"),
    ({"max_decoding_length": 10**6}, "limit"),
    ({"no_repeat_ngram_size": "3"}, "integer"),
    ({"return_token_scores": 1}, "true or false")])
def test_server_refuses_bad_rules_with_400(served, payload, message):
  status, body = _post(served.url + "/v1/translate", {"text": ["a"], **payload})
  assert status == 400 and message in body["error"], body
  assert body["code"] == "invalid_field"


def _infer(*args, stdin=None):
  return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=REPO,
                        input=stdin, capture_output=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_infer_writes_token_scores_and_refuses_bad_flags(workdir, translator):
  args = ("--mode=translate", f"--workdir={workdir}", "--max_source_len=16",
          "--batch_tokens=32", "--beam_size=2")
  run = _infer(*args, "--return_token_scores", "--no_repeat_ngram_size=2",
               stdin="".join(t + "\n" for t in TEXTS).encode())
  assert run.returncode == 0, run.stderr.decode()[-3000:]
  lines = run.stdout.decode().splitlines()
  want = translator.translate(TEXTS, beam_size=2, no_repeat_ngram_size=2,
                              return_token_scores=True)
  assert len(lines) == len(TEXTS) and lines[1] == ""
  for line, t in ((l, t) for l, t in zip(lines, want) if t.nbest):
    text, score, scores = line.split("\t")
    assert text == t.text and float(score) == pytest.approx(t.score, abs=1e-3)
    assert [float(x) for x in scores.split()] == pytest.approx(
        list(t.nbest[0].token_scores), abs=1e-3)
  bad = _infer(*args, "--min_decoding_length=9", "--max_decoding_length=4",
               stdin=b"a\n")
  assert bad.returncode != 0
  assert "--min_decoding_length=9: must be <= max_decoding_length" in bad.stderr.decode()
