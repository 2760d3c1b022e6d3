"""bench/on_device.py: every artifact kind exported, run in fresh pinned processes and
tabled, on a smoke model and a few real sentences; its size and table helpers."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bench import on_device_kinds as kinds_lib
from bench import on_device_table as table
from tests.conftest import REPO


def test_tree_bytes_is_what_du_b_prints(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 5000)
  (tmp_path / "y.txt").write_text("hello")
  os.link(tmp_path / "y.txt", tmp_path / "a" / "hard.txt")  # Counted once.
  du = subprocess.run(["du", "-sb", str(tmp_path)], capture_output=True, text=True,
                      check=True)
  assert kinds_lib.tree_bytes(str(tmp_path)) == int(du.stdout.split()[0])


def test_a_runtime_needs_the_distributions_its_modules_require():
  stablehlo = kinds_lib.RUNTIMES["stablehlo"]
  assert kinds_lib.runtime_modules(stablehlo) == {"jax", "numpy", "sentencepiece"}
  needed = kinds_lib.runtime_bytes(stablehlo)
  assert {"jax", "jaxlib", "numpy", "sentencepiece", "flatbuffers", "ml-dtypes",
          "scipy", "opt-einsum"} == set(needed["runtime_distributions"])
  ours = kinds_lib.runtime_bytes(kinds_lib.RUNTIMES["ours"])
  assert set(needed["runtime_distributions"]) - {"flatbuffers"} < set(
      ours["runtime_distributions"])
  assert ours["runtime_bytes"] > needed["runtime_bytes"] > 50e6  # jaxlib alone is.
  assert "grain" in ours["runtime_distributions"]  # The project's whole install.
  onnx = kinds_lib.RUNTIMES["onnx"]
  if not os.path.exists(REPO / onnx.runner_file):
    assert kinds_lib.missing(onnx) == f"{onnx.runner_file} does not exist"


def test_cpu_lists_and_the_unavailable_row():
  assert table.expand_cpus("0") == [0]
  assert table.expand_cpus("0,2-4") == [0, 2, 3, 4]
  why = "flag --format=onnx: value should be one of <ctranslate2|bundle|stablehlo>"
  text = table.markdown(["onnx/int8"], {}, {"onnx/int8": why}, ["0", "0,1"])
  row = text.splitlines()[2]
  assert row.startswith("| onnx/int8 | not available: flag --format=onnx: value"
                        r" should be one of <ctranslate2\|bundle\|stablehlo> |")
  assert row.replace(r"\|", "").count("|") == len(table.COLUMNS) + 1
  assert "1 core / 2 cores (taskset -c 0 / 0,1)" in text


# Every runtime once (each kind costs an export and three processes; the workdir and
# the other precisions run the same code as the int8 bundle).
KINDS = ("bundle/int8", "stablehlo/float32", "onnx/float32", "ctranslate2/int8")


@pytest.mark.slow
def test_every_requested_kind_gets_a_row(trained_workdir, multi30k_dir, tmp_path):
  out = tmp_path / "out"
  env = {**os.environ, "XLA_FLAGS": ""}  # One CPU device, as a user's run has.
  result = subprocess.run(
      [sys.executable, "-m", "bench.on_device", f"--workdir={trained_workdir}",
       f"--input={multi30k_dir / 'test_2016_flickr.en.gz'}",
       f"--reference={multi30k_dir / 'test_2016_flickr.fr.gz'}",
       "--max_sentences=3", "--latency_sentences=2", "--rounds=1", "--cpus=0",
       "--nowarmup", f"--kinds={','.join(KINDS)}", f"--output_dir={out}",
       f"--output_jsonl={out / 'lines.jsonl'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in (out / "lines.jsonl").read_text().splitlines()]
  header = lines[0]
  assert header["kind"] == "header" and header["sentences"] == 3
  assert header["command"].startswith("python -m bench.on_device --workdir=")
  results = {l["artifact"]: l for l in lines if l["kind"] == "result"}
  unavailable = {l["artifact"]: l["reason"] for l in lines
                 if l["kind"] == "unavailable"}
  assert set(results) | set(unavailable) == set(KINDS)
  assert not set(results) & set(unavailable)
  expected = {"bundle/int8", "stablehlo/float32"}
  if importlib.util.find_spec("ctranslate2"):
    expected |= {"ctranslate2/int8"}
  if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("jax2onnx"):
    expected |= {"onnx/float32"}  # The [onnx] extra.
  assert expected <= set(results), unavailable
  for kind, r in results.items():
    assert r["cpus"] == "0" and r["rounds"] == 1 and "errors" not in r, kind
    assert r["size_bytes"] > 0 and r["runtime_bytes"] > r["size_bytes"]
    assert r["peak_rss_bytes"] > 10e6 and r["driver_peak_rss_bytes"] > 10e6
    assert r["cold_start_s"] > 0 and r["file_s"] > 0 and r["load_s"] > 0
    assert 0 < r["p50_ms"] <= r["p90_ms"] and r["sentences_per_s"] > 0
    assert isinstance(r["bleu_lc_tok"], float) and 0 <= r["bleu_lc_tok"] <= 100
    assert r["outputs_identical"]
  # The StableHLO directory is the float32 bundle plus its programs.
  assert results["bundle/int8"]["size_bytes"] < results["stablehlo/float32"]["size_bytes"]
  assert results["stablehlo/float32"]["export_command"].startswith(
      "python export.py --format=stablehlo")
  assert (results["stablehlo/float32"]["runtime_bytes"]
          < results["bundle/int8"]["runtime_bytes"])
  rows = [l for l in result.stdout.splitlines() if l.startswith("| ")]
  assert len(rows) == 1 + len(KINDS)  # The column names, then kinds.
  assert all(f"| {kind} |" in result.stdout for kind in KINDS)
  for kind, why in unavailable.items():
    assert f"| {kind} | not available: {table.cell(why)} |" in result.stdout
