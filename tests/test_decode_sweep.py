"""bench/decode_sweep.py on the session's trained workdir: one scored line per setting."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_one_line_per_beam_and_alpha_scored_on_validation(trained_workdir):
  out = subprocess.run(
      [sys.executable, "bench/decode_sweep.py", f"--workdir={trained_workdir}",
       "--beam_sizes=1,2", "--alphas=0.6,1.0", "--max_sentences=8"],
      cwd=REPO, capture_output=True, text=True, check=True).stdout
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert [(r["beam_size"], r["alpha"]) for r in rows] == [
      (1, 0.6), (1, 1.0), (2, 0.6), (2, 1.0)]
  assert all(r["split"] == "validation" and r["step"] == 4 and r["sentences"] == 8
             for r in rows)
  assert all(0 <= r["bleu_lc_tok"] <= 100 and "chrf" in r for r in rows)
  # Beam 1 is greedy search, which the length penalty cannot change.
  assert rows[0]["bleu_lc_tok"] == rows[1]["bleu_lc_tok"]
