"""bench/cost_table.py's table: rows merged by name, missing cells said, not blank."""
import json
import subprocess
import sys

from tests.conftest import REPO


def table(path) -> str:
  # A process of its own: the script defines absl flags that train.py also defines.
  return subprocess.run([sys.executable, "bench/cost_table.py", f"--table={path}"],
                        cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_table_merges_a_rows_bleu_and_latency_lines(tmp_path):
  path = tmp_path / "costs.jsonl"
  lines = [
      {"name": "teacher", "engine": "jax", "precision": "float32", "beam_size": 4,
       "parameters": 2874368, "weight_bytes": 11497472,
       "validation_bleu_lc_tok": 54.87, "test_2016_flickr_bleu_lc_tok": 57.24},
      {"name": "student", "engine": "jax", "precision": "int8", "beam_size": 1,
       "parameters": 2477696, "weight_bytes": 5_000_000,
       "b1_ms_per_sentence": 9.5},
      {"name": "teacher", "b1_ms_per_sentence": 20.04, "b32_sentences_per_s": 101.2},
  ]
  path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
  rows = table(path).splitlines()
  assert len(rows) == 4  # Header, rule, one row per name.
  teacher = [c.strip() for c in rows[2].strip("|").split("|")]
  assert teacher[:5] == ["teacher", "jax", "float32", "4", "2,874,368"]
  assert teacher[5] == "11.5" and teacher[6] == "54.87" and teacher[8] == "57.24"
  assert teacher[10] == "20.0" and teacher[12] == "101.2"
  assert teacher[7] == "not measured"  # No sacreBLEU was given.
  student = [c.strip() for c in rows[3].strip("|").split("|")]
  assert student[2] == "int8" and student[10] == "9.5"
  assert student[6] == "not measured"
