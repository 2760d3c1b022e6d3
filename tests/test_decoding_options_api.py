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


def test_a_prefix_of_our_own_output_gives_that_output(translator):
  """Its first k token ids (a text would be tokenized anew, maybe otherwise)."""
  free = translator.translate(TEXTS, beam_size=1)
  for k in (1, 3):
    prefixes = [list(r.ids[:k]) or None for r in free]
    forced = translator.translate(TEXTS, beam_size=1, target_prefix=prefixes)
    for f, r in zip(forced, free):
      assert f.ids == r.ids and (f.score or 0) == pytest.approx(r.score or 0,
                                                                abs=1e-4)
      if f.nbest:
        h = f.nbest[0]
        assert h.prefix_len == min(k, len(h.ids))
        assert h.prefix_score == pytest.approx(sum(h.token_scores[:h.prefix_len]))
  other = translator.translate(["Two dogs play."], target_prefix=["Le chat"])[0]
  assert other.text.startswith("Le chat")
  with pytest.raises(ValueError, match="one per text"):
    translator.translate(TEXTS, target_prefix=["a"])


def test_server_takes_target_prefixes(served, translator):
  prefixes = [None, None, "Le chat", "Salut"]
  status, body = _post(served.url + "/v1/translate",
                       {"text": TEXTS, "target_prefix": prefixes})
  assert status == 200, body
  want = translator.translate(TEXTS, target_prefix=prefixes)
  for got, w, p in zip(body["translations"], want, prefixes):
    assert got["text"] == w.text and got["tokens"] == list(w.ids)
    assert got.get("prefix_tokens", 0) == (w.nbest[0].prefix_len if w.nbest else 0)
    assert bool(got.get("prefix_tokens")) == bool(p and w.nbest)
  status, body = _post(served.url + "/v1/translate",
                       {"text": TEXTS, "target_prefix": ["a"]})
  assert status == 400 and "one per" in body["error"], body


@pytest.mark.slow
def test_infer_takes_prefixes_from_a_file_or_the_input(workdir, translator, tmp_path):
  prefixes = ["", "", "Le chat", "Salut"]
  want = [t.text for t in translator.translate(TEXTS, beam_size=2,
                                               target_prefix=prefixes)]
  (tmp_path / "src").write_text("".join(t + "\n" for t in TEXTS))
  (tmp_path / "prefix").write_text("".join(p + "\n" for p in prefixes))
  args = ("--mode=translate", f"--workdir={workdir}", "--max_source_len=16",
          "--batch_tokens=32", "--beam_size=2")
  run = _infer(*args, f"--input={tmp_path / 'src'}",
               f"--target_prefix={tmp_path / 'prefix'}")
  assert run.returncode == 0, run.stderr.decode()[-3000:]
  assert run.stdout.decode().splitlines() == want
  tabbed = "".join(f"{t}\t{p}\n" if p else t + "\n" for t, p in zip(TEXTS, prefixes))
  run = _infer(*args, "--prefix_in_input", stdin=tabbed.encode())
  assert run.returncode == 0, run.stderr.decode()[-3000:]
  assert run.stdout.decode().splitlines() == want
  (tmp_path / "short").write_text("x\n")
  bad = _infer(*args, f"--input={tmp_path / 'src'}",
               f"--target_prefix={tmp_path / 'short'}")
  assert bad.returncode != 0 and "differ in length" in bad.stderr.decode()


def test_sampling_is_seeded_reproducible_and_top_1_is_greedy(translator):
  options = dict(num_samples=3, sampling_topk=20, sampling_temperature=1.2, seed=5)
  first = translator.translate(TEXTS, **options)
  assert [len(t.nbest) for t in first] == [3, 0, 3, 3]
  assert first == translator.translate(TEXTS, **options)
  shuffled = translator.translate(TEXTS[::-1] + ["Other words here."], **options)
  assert shuffled[:4][::-1] == first  # Batch composition changes no sample.
  assert translator.translate(TEXTS, **{**options, "seed": 6}) != first
  greedy = translator.translate(TEXTS, beam_size=1)
  top1 = translator.translate(TEXTS, sampling_topk=1)
  assert [t.ids for t in top1] == [t.ids for t in greedy]
  with pytest.raises(ValueError, match="sampling_topp=0.0 must be a number in"):
    translator.translate(["a"], sampling_topp=0.0)
  with pytest.raises(ValueError, match="sampling_temperature"):
    translator.translate(["a"], sampling_temperature=-1.0)


def test_server_samples_like_the_translator(served, translator):
  request = {"text": TEXTS, "num_samples": 2, "sampling_topp": 0.9, "seed": 3}
  status, body = _post(served.url + "/v1/translate", request)
  assert status == 200, body
  want = translator.translate(TEXTS, num_samples=2, sampling_topp=0.9, seed=3)
  for got, w in zip(body["translations"], want):
    assert [h["tokens"] for h in got.get("nbest", [])] == [list(h.ids) for h in w.nbest]
  status, body = _post(served.url + "/v1/translate",
                       {"text": ["a"], "sampling_temperature": 0})
  assert status == 400 and "sampling_temperature" in body["error"], body


@pytest.mark.slow
def test_infer_samples_and_top_1_is_the_greedy_output(workdir):
  args = ("--mode=translate", f"--workdir={workdir}", "--max_source_len=16",
          "--batch_tokens=32")
  stdin = "".join(t + "\n" for t in TEXTS).encode()
  greedy = _infer(*args, "--beam_size=1", stdin=stdin)
  top1 = _infer(*args, "--sampling_topk=1", stdin=stdin)
  assert greedy.returncode == top1.returncode == 0, top1.stderr.decode()[-3000:]
  assert top1.stdout == greedy.stdout
  two = _infer(*args, "--num_samples=2", "--seed=4", stdin=stdin)
  assert two.returncode == 0, two.stderr.decode()[-3000:]
  lines = two.stdout.decode().splitlines()
  assert [len(l.split("\t")) for l in lines] == [4, 1, 4, 4]
  assert _infer(*args, "--num_samples=2", "--seed=4", stdin=stdin).stdout == two.stdout


def test_alternatives_come_with_the_token_scores(translator, served):
  results = translator.translate(TEXTS, beam_size=1, return_alternatives=3)
  for r in (r for r in results if r.nbest):
    h = r.nbest[0]
    assert len(h.alternatives) == len(h.token_scores) > 0
    assert all(len(position) == 3 for position in h.alternatives)
    for position, score in zip(h.alternatives, h.token_scores):
      assert [x for _, x in position] == sorted((x for _, x in position), reverse=True)
      assert position[0][1] >= score - 1e-5  # Greedy took the best (or EOS barred).
  assert "\t" in results[0].line()  # text, score, token scores, alternatives.
  assert len(results[0].line().split("\t")) == 4
  status, body = _post(served.url + "/v1/translate",
                       {"text": TEXTS[:1], "beam_size": 1, "return_alternatives": 3})
  assert status == 200, body
  got = body["translations"][0]
  assert [[a["token"] for a in p] for p in got["alternatives"]] == [
      [i for i, _ in p] for p in results[0].nbest[0].alternatives]
  assert "token_scores" in got
  with pytest.raises(ValueError, match="return_alternatives"):
    translator.translate(["a"], return_alternatives=2, sampling_topk=5)


def test_alignments_in_the_api_server_and_line(translator, served):
  results = translator.translate(TEXTS, beam_size=2, nbest=2, return_alignment=True)
  sources = translator.tokenize(TEXTS)
  for r, s in zip(results, sources):
    for h in r.nbest:
      assert [j for _, j in h.alignment] == list(range(len(h.ids)))  # Each token once.
      assert all(0 <= i < len(s.ids) - 1 for i, _ in h.alignment)  # Not source EOS.
  assert results[0].line(2).split("\t")[2] == results[0].nbest[0].alignment_text
  status, body = _post(served.url + "/v1/translate", {
      "text": TEXTS, "beam_size": 2, "return_alignment": True, "alignment_layer": 0})
  assert status == 200, body
  want = translator.translate(TEXTS, beam_size=2, return_alignment=True,
                              alignment_layer=0)
  assert [t.get("alignment", "") for t in body["translations"]] == [
      t.nbest[0].alignment_text if t.nbest else "" for t in want]
  status, body = _post(served.url + "/v1/translate", {
      "text": ["a"], "return_alignment": True, "alignment_layer": 9})
  assert status == 400 and "alignment_layer=9" in body["error"], body


@pytest.mark.slow
def test_infer_prints_pharaoh_alignments(workdir, translator):
  args = ("--mode=translate", f"--workdir={workdir}", "--max_source_len=16",
          "--batch_tokens=32", "--beam_size=2", "--return_alignment")
  run = _infer(*args, stdin="".join(t + "\n" for t in TEXTS).encode())
  assert run.returncode == 0, run.stderr.decode()[-3000:]
  want = translator.translate(TEXTS, beam_size=2, return_alignment=True)
  for line, t in zip(run.stdout.decode().splitlines(), want):
    assert line == (f"{t.text}\t{t.score:.4f}\t{t.nbest[0].alignment_text}"
                    if t.nbest else "")
