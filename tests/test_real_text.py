"""bench/real_text.py end to end on a smoke model and a few real sentences."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("ctranslate2")


def test_quick_run_prints_every_figure(trained_workdir, multi30k_dir):
  env = {**os.environ, "XLA_FLAGS": ""}  # One CPU device, as a user's run has.
  out = subprocess.run(
      [sys.executable, "-m", "bench.real_text", f"--workdir={trained_workdir}",
       f"--input={multi30k_dir / 'test_2016_flickr.en.gz'}",
       f"--reference={multi30k_dir / 'test_2016_flickr.fr.gz'}", "--quick",
       "--max_sentences=5"],
      cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=600)
  lines = [json.loads(line) for line in out.stdout.splitlines()]
  kinds = [line["kind"] for line in lines]
  assert kinds.count("header") == 1
  header = lines[0]
  assert header["sentences"] == 5 and header["CT2_USE_MKL"] == "1"
  results = {(r["engine"], r["batch_size"]): r for r in lines if r["kind"] == "result"}
  assert set(results) == {(e, b) for e in ("ours/float32",
                                           "ctranslate2/float32/threads1")
                          for b in (None, 1, 8)}
  for r in results.values():
    assert r["sentences_per_s"] > 0 and r["target_tokens_per_s"] > 0
    assert 0 < r["p50_ms"] <= r["p90_ms"]
  for engine in ("ours/float32", "ctranslate2/float32/threads1"):
    whole = results[(engine, None)]
    assert 0 <= whole["bleu_lc_tok"] <= 100 and whole["first_pass_sentences_per_s"] > 0
  ratios = [r for r in lines if r["kind"] == "ratio"]
  assert {r["batch_size"] for r in ratios} == {None, 1, 8}
  assert all(r["speed_ours_over_ct2"] > 0 for r in ratios)
  cold = {r["engine"]: r for r in lines if r["kind"] == "cold"}
  assert set(cold) == {"ours/float32", "ctranslate2/float32/threads1"}
  for r in cold.values():
    assert 0 < r["first_sentence_s"] < r["first_line_s"] <= r["total_s"]
    assert r["warm_pass_s"] > 0 and r["restore_s"] > 0
