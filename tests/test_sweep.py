"""aot/sweep.py: the runs behind docs/tpu.md cover every shipped config and
generation, and an interrupted sweep keeps only whole results."""
import json
import os
import sys

import pytest

from aot import sweep
from aot import topology
from tests.conftest import REPO


def shipped_configs() -> set[str]:
  return {f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
          if f.endswith(".py") and not f.startswith("_")}


def test_every_shipped_config_compiles_for_every_tpu_generation():
  names = [r.name for r in sweep.RUNS]
  assert len(names) == len(set(names)), "two runs would write the same file"
  for config in shipped_configs():
    topologies = {r.topology for r in sweep.RUNS if r.config == config}
    generations = {t.split("-")[0] for t in topologies if t in topology.TOPOLOGIES}
    assert {"v4", "v5e", "v5p", "v6e"} <= generations, (config, topologies)
    assert "v5e-16" in topologies, f"{config}: no multi-host topology"


@pytest.mark.parametrize("code,output,kept", [(0, "{}", True), (1, "{}", True),
                                              (1, "", False), (-9, "{}", False)])
def test_a_run_is_kept_only_when_it_printed_its_lines(tmp_path, monkeypatch, code,
                                                      output, kept):
  run = sweep.Run("smoke", "v5e-4", "data")
  script = (f"import os, sys; print({output!r}, end=''); sys.stdout.flush();"
            f" os.kill(os.getpid(), 9) if {code} < 0 else sys.exit({code})")
  monkeypatch.setattr(sweep.Run, "command", lambda self: [sys.executable, "-c", script])
  sweep.run_one(run, str(tmp_path))
  assert os.path.exists(tmp_path / f"{run.name}.jsonl") == kept
  assert sweep.main(["--out", str(tmp_path), "--list"]) == 0


def test_tables_follow_the_runs(tmp_path):
  line = {"config": "smoke.py", "program": "beam_search", "topology": "v5e-4",
          "chips": 4, "hosts": 1, "mesh": {"data": 4, "fsdp": 1, "tensor": 1},
          "batch": 8, "error": "over by 1 GiB"}
  for run in sweep.RUNS[:2][::-1]:
    (tmp_path / f"{run.name}.jsonl").write_text(
        json.dumps({**line, "topology": run.topology + "/" + run.mesh}) + "\n")
  rows = [l for l in sweep.tables(str(tmp_path)).splitlines() if "over by" in l]
  first, second = sweep.RUNS[0], sweep.RUNS[1]
  assert f"{first.topology}/{first.mesh}" in rows[0]
  assert f"{second.topology}/{second.mesh}" in rows[1]
