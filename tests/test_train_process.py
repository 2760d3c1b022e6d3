"""train.py as a process: exact resume after SIGKILL, SIGTERM saves, two-process runs."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from data import pipeline
from tests.conftest import REPO, Run

TIMEOUT = 300
pytestmark = pytest.mark.slow  # train.py processes: minutes, not seconds.


def _command(prepared, workdir, *overrides):
  config = prepared[0]
  return [sys.executable, str(REPO / "train.py"), f"--config={REPO}/configs/smoke.py",
          f"--workdir={workdir}", f"--config.data.manual_dir={config.data.manual_dir}",
          f"--config.data.tfds_data_dir={config.data.tfds_data_dir}",
          "--config.eval_every_steps=1000", *overrides]


def _workdir(prepared, path):
  """A fresh workdir holding the session's tokenizer, so runs skip training one."""
  path.mkdir()
  (path / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  return path


def _start(command, log, cwd=REPO, **env):
  return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, **env})


def _run(command, log_path, **env):
  with open(log_path, "w") as log:
    proc = _start(command, log, **env)
    assert proc.wait(TIMEOUT) == 0, pathlib.Path(log_path).read_text()[-3000:]


def _train_losses(workdir):
  """{step: loss} from metrics.jsonl; for a step logged twice, the later line wins."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


def _wait_for(condition, proc, what):
  deadline = time.monotonic() + TIMEOUT
  while not condition():
    assert proc.poll() is None, f"train.py exited before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.01)


def test_sigkill_then_restart_continues_exactly(prepared, tmp_path):
  steps = ("--config.num_train_steps=8", "--config.checkpoint_every_steps=5")
  straight = _workdir(prepared, tmp_path / "straight")
  _run(_command(prepared, straight, *steps, "--config.final_eval_splits=('validation',)",
                "--config.average_last_checkpoints=2", "--config.decode.beam_size=1"),
       tmp_path / "straight.log")
  # The recipe's end: checkpoints 5 and 8 averaged and scored on validation.
  [result] = json.loads((straight / "results.json").read_text())
  assert (result["data"], result["step"], result["averaged_checkpoints"]) == (
      "validation", 8, 2)
  assert (straight / "averaged_last2" / "8").is_dir()

  killed = _workdir(prepared, tmp_path / "killed")
  with open(tmp_path / "killed.log", "w") as log:
    proc = _start(_command(prepared, killed, *steps), log)
    _wait_for(lambda: (killed / "checkpoints" / "5").is_dir(), proc, "checkpoint 5")
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
  assert _checkpoint_steps(killed) == [5]
  _run(_command(prepared, killed, *steps), tmp_path / "restart.log")
  assert "Restored step 5" in (tmp_path / "restart.log").read_text()

  expected, resumed = _train_losses(straight), _train_losses(killed)
  assert sorted(expected) == list(range(1, 9))
  assert [resumed[s] for s in (6, 7, 8)] == [expected[s] for s in (6, 7, 8)]


def test_sigterm_saves_the_current_step_and_exits(prepared, tmp_path):
  workdir = _workdir(prepared, tmp_path / "run")
  with open(tmp_path / "run.log", "w") as log:  # A relative --workdir, as in the README.
    proc = _start(_command(prepared, "run", "--config.num_train_steps=100000",
                           "--config.checkpoint_every_steps=100000"), log, cwd=tmp_path)
    _wait_for(lambda: len(_train_losses(workdir)) >= 3
              if (workdir / "metrics.jsonl").exists() else False, proc, "step 3")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0, (tmp_path / "run.log").read_text()[-3000:]
  last_step = max(_train_losses(workdir))
  assert 3 <= last_step < 100000
  assert _checkpoint_steps(workdir) == [last_step]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_same_global_batch(prepared, tmp_path):
  workdir = _workdir(prepared, tmp_path / "run")
  address = f"127.0.0.1:{_free_port()}"
  procs, logs = [], []
  for i in range(2):
    logs.append(open(tmp_path / f"process{i}.log", "w"))
    procs.append(_start(
        _command(prepared, workdir, "--config.num_train_steps=2",
                 f"--coordinator_address={address}", "--num_processes=2",
                 f"--process_id={i}"),
        logs[i], XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  for i, proc in enumerate(procs):
    assert proc.wait(TIMEOUT) == 0, (tmp_path / f"process{i}.log").read_text()[-3000:]
    logs[i].close()
  losses = _train_losses(workdir)

  # One process, 8 devices, fed the global batch the two processes assembled:
  # process 0's rows (its shard of the data) then process 1's.
  config, _, sources, tokenizer = prepared
  rows = config.batch_tokens // config.data.max_length // 2
  shards = [iter(pipeline.train_dataset(
      sources["train"], tokenizer, batch_size=rows, max_length=config.data.max_length,
      seed=config.seed, shard_index=i, shard_count=2)) for i in range(2)]
  batches = []
  for _ in range(2):
    parts = [next(s) for s in shards]
    batches.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  expected = Run(prepared, (8, 1, 1)).train(batches)
  np.testing.assert_allclose([losses[1], losses[2]], expected, rtol=1e-5)
  assert _checkpoint_steps(workdir) == [2]


def test_a_second_run_on_a_locked_workdir_exits_at_once(prepared, tmp_path):
  workdir = _workdir(prepared, tmp_path / "run")
  # This test process is alive on this host: its lock is not stale.
  (workdir / "train.lock").write_text(json.dumps(
      {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
  log = tmp_path / "run.log"
  with open(log, "w") as f:
    assert _start(_command(prepared, workdir), f).wait(TIMEOUT) != 0
  assert f"being trained by PID {os.getpid()}" in log.read_text()
  assert sorted(p.name for p in workdir.iterdir()) == ["spm.model", "train.lock"]


def test_a_bad_config_stops_before_anything_is_written(prepared, tmp_path):
  log = tmp_path / "run.log"
  with open(log, "w") as f:
    proc = _start(_command(prepared, tmp_path / "run", "--config.decode.beam_size=0",
                           "--config.checkpoint_every_steps=0",
                           "--config.model.num_heads=5", "--config.decode.alpha=nan"),
                  f)
    assert proc.wait(TIMEOUT) != 0
  text = log.read_text()
  assert "config.decode.beam_size=0" in text, text[-3000:]
  assert "config.checkpoint_every_steps=0" in text
  assert "config.model.emb_dim=32: must be a multiple of model.num_heads=5" in text
  assert "config.decode.alpha=nan: must be a finite number >= 0" in text
  assert not (tmp_path / "run").exists()
