"""The Translator API: per-call decode options, n-best results, teacher-forced scoring
consistent with the beam search, infer.py --mode=score and the compilation cache."""
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from data import tokenizer as tokenizer_lib
from inference import compile_cache
from inference import bucketing
from inference import restore
from inference import scoring
from inference.translator import Translator
from inference.translator import inference_partitioner
from models import transformer
from storage import layout
from tests.conftest import REPO

TEXTS = ["A man in a blue shirt is riding a bike.", "", "Two dogs play.", "Hi"]


def random_workdir(prepared, workdir: pathlib.Path) -> pathlib.Path:
  """A workdir holding the smoke model with random weights at step 1 (no training)."""
  config, prepared_dir, _, tokenizer = prepared
  proto = (prepared_dir / "spm.model").read_bytes()
  (workdir / "spm.model").write_bytes(proto)
  layout.write_config(workdir, config)
  tokenizer_lib.bind_to_run(workdir, proto)
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer_lib.PAD_ID)
  _, params = inference_partitioner(config).init_params(model_cfg.make_model())
  layout.save_params(layout.checkpoint_dir(workdir), 1, params)
  return workdir


@pytest.fixture(scope="module")
def workdir(prepared, tmp_path_factory):
  return random_workdir(prepared, tmp_path_factory.mktemp("random"))


@pytest.fixture(scope="module")
def translator(workdir):
  return Translator.from_workdir(str(workdir), max_len=16, batch_tokens=32)


def test_from_workdir_reads_config_and_tokenizer_once(workdir, monkeypatch):
  calls = []
  for module, name in ((layout, "read_config"), (tokenizer_lib, "load_from_workdir")):
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: (
        calls.append(_n), _f(*a, **k))[1])
  translator = Translator.from_workdir(str(workdir), decode_overrides={"beam_size": 2})
  assert sorted(calls) == ["load_from_workdir", "read_config"]
  assert translator.settings.beam_size == 2 and translator.max_len == 256


def test_translate_gives_ids_scores_and_nbest_lists(translator):
  results = translator.translate(TEXTS, beam_size=3, nbest=3, alpha=0.2)
  assert [len(r.nbest) for r in results] == [3, 0, 3, 3]
  assert results[1].text == "" and results[1].score is None
  for r in results:
    for h in r.nbest:
      assert translator.tokenizer.decode(list(h.ids)) == h.text
    assert [h.score for h in r.nbest] == sorted((h.score for h in r.nbest), reverse=True)
  best = translator.translate(TEXTS, beam_size=3, alpha=0.2)
  assert [r.text for r in best] == [r.text for r in results]


@pytest.mark.parametrize("options, message", [
    ({"beam_size": 0}, "beam_size"), ({"beam_size": 2, "nbest": 3}, "nbest"),
    ({"alpha": float("nan")}, "alpha")])
def test_bad_options_are_errors(translator, options, message):
  with pytest.raises(ValueError, match=message):
    translator.translate(["a"], **options)


def test_score_of_the_greedy_output_is_its_search_score(translator):
  """alpha 0 leaves the search score a plain sum of log-probabilities.

  It counts EOS only if the hypothesis ended with it, not at its length limit (as a
  random model's do), so both sums are candidates.
  """
  texts = [t for t in TEXTS if t]
  results = translator.translate(texts, beam_size=1, alpha=0.0)
  sources = [s.ids for s in translator.tokenize(texts)]
  pairs = [scoring.Pair(i, src, list(r.ids) + [tokenizer_lib.EOS_ID])
           for i, (src, r) in enumerate(zip(sources, results), 1)]
  length = bucketing.bucket(max(p.length for p in pairs))
  scores = translator.score_batch(pairs, length, len(pairs))
  for score, result in zip(scores, results):
    with_eos, without = score.score, sum(score.token_scores[:-1])
    assert min(abs(with_eos - result.score), abs(without - result.score)) < 1e-3, (
        with_eos, without, result.score)


def test_score_gives_one_log_probability_per_target_token(translator):
  scores = translator.score(TEXTS, ["Un homme.", "", "Deux chiens.", "Salut"])
  for s in scores:
    assert len(s.token_scores) == len(s.ids) and s.ids[-1] == tokenizer_lib.EOS_ID
    assert s.score == pytest.approx(sum(s.token_scores), abs=1e-4)
    assert all(x <= 0 for x in s.token_scores)
  with pytest.raises(ValueError, match="one target per source"):
    translator.score(["a"], [])


def test_compilation_cache_refuses_a_directory_others_can_write(tmp_path):
  shared = tmp_path / "shared"
  shared.mkdir(mode=0o777)
  os.chmod(shared, 0o777)
  assert compile_cache.private_dir(str(shared)) is None
  assert compile_cache.private_dir(str(tmp_path / "new")) == str(tmp_path / "new")
  assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o700


def _infer(*args, stdin=None):
  return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=REPO,
                        input=stdin, capture_output=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_score_mode_reads_pairs_and_a_second_run_compiles_nothing(workdir, translator,
                                                                   tmp_path):
  cache = tmp_path / "cache"
  targets = ["Un homme.", "", "Deux chiens.", "Salut"]
  stdin = "".join(f"{s}\t{t}\n" for s, t in zip(TEXTS, targets)).encode()
  args = ("--mode=score", f"--workdir={workdir}", "--max_source_len=16",
          "--batch_tokens=32", f"--compilation_cache_dir={cache}")
  first = _infer(*args, stdin=stdin)
  assert first.returncode == 0, first.stderr.decode()[-3000:]
  lines = first.stdout.decode().splitlines()
  expected = translator.score(TEXTS, targets)
  assert len(lines) == len(TEXTS)
  for line, score in zip(lines, expected):
    total, tokens = line.split("\t")
    assert float(total) == pytest.approx(score.score, abs=1e-3)
    assert len(tokens.split()) == len(score.ids)
  cached = sorted(os.listdir(cache))
  assert cached and os.stat(cache).st_mode & 0o777 == 0o700
  (tmp_path / "src").write_text("".join(t + "\n" for t in TEXTS))
  (tmp_path / "tgt").write_text("".join(t + "\n" for t in targets))
  second = _infer(*args, f"--input={tmp_path / 'src'}", f"--target={tmp_path / 'tgt'}")
  assert second.returncode == 0, second.stderr.decode()[-3000:]
  assert second.stdout.decode().splitlines() == lines
  assert sorted(os.listdir(cache)) == cached  # Every program came from the cache.


@pytest.mark.parametrize("field, value", [
    ("max_len", 0), ("max_len", -1), ("max_len", 2.5), ("batch_tokens", 0),
    ("batch_tokens", -4096)])
def test_bad_limits_are_refused_before_the_model_loads(workdir, translator, monkeypatch,
                                                      field, value):
  with pytest.raises(ValueError, match=rf"{field}={value}.*positive integer"):
    dataclasses.replace(translator, **{field: value})
  monkeypatch.setattr(restore, "restore_params", lambda *a, **k: pytest.fail("loaded"))
  with pytest.raises(ValueError, match=rf"{field}={value}.*positive integer"):
    Translator.from_workdir(str(workdir), **{field: value})
