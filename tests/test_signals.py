"""Stops at awkward moments: SIGTERM during a validation pass, SIGKILL during a save."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from parallel.sharding import Partitioner
from tests.conftest import REPO
from recipes import train_and_score
from training import signals
from training import trainer

TIMEOUT = 300
slow = pytest.mark.slow  # Trains (compiles the steps, or runs train.py).


def _workdir(prepared, path):
  """A fresh workdir holding the session's tokenizer, so runs skip training one."""
  path.mkdir()
  (path / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  return path


def _entries(workdir):
  return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


def _until(condition):
  deadline = time.monotonic() + 10
  while not condition():
    assert time.monotonic() < deadline
    time.sleep(0.01)


def test_sigterm_is_remembered_and_aborts_only_an_evaluation():
  previous = signal.getsignal(signal.SIGTERM)
  with signals.Sigterm() as sigterm:
    with sigterm.interruptible():
      pass  # No signal: the body runs.
    with pytest.raises(signals.EvaluationInterrupted):
      with sigterm.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        _until(lambda: False)  # Interrupted, not timed out.
    assert sigterm.received
    with pytest.raises(signals.EvaluationInterrupted, match="before"):
      with sigterm.interruptible():  # Asked to stop already: nothing starts.
        pass
  assert signal.getsignal(signal.SIGTERM) == previous
  with signals.Sigterm() as sigterm:
    os.kill(os.getpid(), signal.SIGTERM)  # Outside an evaluation: only remembered.
    _until(lambda: sigterm.received)
  assert signal.getsignal(signal.SIGTERM) == previous


class _SlowBleu:
  """A validation pass of a minute, in short calls like a decoder's batches, during
  which a thread sends this process SIGTERM (as a scheduler preempting the job)."""

  def __init__(self):
    self.signalled = []  # When the SIGTERM was sent.
    self._evaluating = threading.Event()
    threading.Thread(target=self._terminate, daemon=True).start()

  def _terminate(self):
    if self._evaluating.wait(TIMEOUT):
      self.signalled.append(time.monotonic())
      os.kill(os.getpid(), signal.SIGTERM)

  def __call__(self, graphdef, params):
    del graphdef, params
    self._evaluating.set()
    for _ in range(600):
      time.sleep(0.1)
    return {"bleu": 0.0}


@slow
def test_sigterm_during_validation_saves_within_seconds(prepared, tmp_path):
  config, _, sources, tokenizer = prepared
  config = config.copy_and_resolve_references()
  config.num_train_steps, config.checkpoint_every_steps = 1000, 1000
  config.eval_every_steps = 2
  workdir = _workdir(prepared, tmp_path / "run")
  slow_bleu = _SlowBleu()
  handler = signal.getsignal(signal.SIGTERM)
  result = trainer.run(config, str(workdir), Partitioner.from_config(config), sources,
                       tokenizer, evaluators=[slow_bleu])
  assert time.monotonic() - slow_bleu.signalled[0] < 10  # Not after the long pass.
  assert result["step"] == 2
  assert result["interrupted"]
  assert _entries(workdir) == ["2"]
  assert signal.getsignal(signal.SIGTERM) == handler  # Put back when run() ends.


@slow
def test_sigterm_in_the_last_validation_exits_then_a_rerun_scores(
    prepared, tmp_path, monkeypatch, capsys, caplog):
  """The last step was reached, but the job was asked to stop: save and exit; the
  averaging and scoring wait for the rerun."""
  config = prepared[0].copy_and_resolve_references()
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.final_eval_splits = ("validation",)
  workdir = _workdir(prepared, tmp_path / "run")
  monkeypatch.setattr(train_and_score, "validation_bleu", lambda *args: [_SlowBleu()])
  scored = []
  monkeypatch.setattr(train_and_score.evaluate, "evaluate_run",
                      lambda *args, **kwargs: scored.append(args) or [])
  train_and_score.train_and_score(config, str(workdir))
  assert _entries(workdir) == ["2"]
  assert scored == []
  result = json.loads(capsys.readouterr().out.splitlines()[-1])["final_validation"]
  assert (result["step"], result["interrupted"]) == (2, True)
  assert "Rerun the same command to finish" in caplog.text
  # The rerun has no step left to train: it averages and scores.
  monkeypatch.setattr(train_and_score, "validation_bleu", lambda *args: [])
  train_and_score.train_and_score(config, str(workdir))
  assert len(scored) == 1


# Runs train.py with step 6's save held up in orbax's background thread (after
# `save()` returned, while training goes on), and says so in a marker file.
_SLOW_SAVE = """
import pathlib, runpy, sys, time
from etils import epath
marker = pathlib.Path(sys.argv.pop())
path_cls = type(epath.Path("/"))
write_text = path_cls.write_text
def slow_write_text(self, *args, **kwargs):
  if "/6.orbax-checkpoint-tmp/" in str(self) and self.name == "_METADATA":
    marker.touch()
    time.sleep(3600)
  return write_text(self, *args, **kwargs)
path_cls.write_text = slow_write_text
sys.argv = sys.argv[1:]  # [train.py, flags...]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train_rows(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == "train"]


@slow
def test_sigkill_during_an_asynchronous_save_then_resume(prepared, tmp_path):
  config = prepared[0]
  workdir = _workdir(prepared, tmp_path / "run")
  flags = [f"--config={REPO}/configs/smoke.py", f"--workdir={workdir}",
           f"--config.data.manual_dir={config.data.manual_dir}",
           f"--config.data.tfds_data_dir={config.data.tfds_data_dir}",
           "--config.eval_every_steps=1000", "--config.num_train_steps=8",
           "--config.checkpoint_every_steps=3"]
  marker = tmp_path / "saving_6"
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(REPO / "train.py"), *flags,
         str(marker)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
      assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
      assert time.monotonic() < deadline, "timed out waiting for the save of step 6"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
  assert _entries(workdir) == ["3", "6.orbax-checkpoint-tmp"]
  before = {r["step"]: r["loss"] for r in _train_rows(workdir)}

  # Resumed up to step 5, so step 6 is not saved again over its temporary folder.
  with open(tmp_path / "resumed.log", "w") as log:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *flags, "--config.num_train_steps=5"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    assert proc.wait(TIMEOUT) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
  assert "Restored step 3" in (tmp_path / "resumed.log").read_text()
  assert _entries(workdir) == ["3", "5"]  # The half save's folder is gone.
  after = {r["step"]: r["loss"] for r in _train_rows(workdir)[len(before):]}
  # Resume is exact: the steps both runs took have the same losses.
  assert after == {s: before[s] for s in (4, 5)}
