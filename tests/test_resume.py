"""Strict resume: mismatched checkpoints stop the run, corrupt ones are moved aside;
processes agree on the step; one training per workdir; the tokenizer bound to the run."""
import json
import os
import socket
import subprocess
import sys

import pytest

from data import pipeline
from data import tokenizer as tokenizer_lib
from storage import integrity
from storage import layout
from recipes import prepare
from tests.conftest import Run, train_in
from training import checkpoints
from training import lock
from training import run_record
from training import validate


def _data_iter(prepared):
  config, _, sources, tokenizer = prepared
  return iter(pipeline.train_dataset(sources["train"], tokenizer, batch_size=16,
                                     max_length=32, seed=config.seed, shard_index=0,
                                     shard_count=1))


def _save(run, directory, *steps_):
  saver = checkpoints.Checkpointer(str(directory), max_to_keep=5)
  for step in steps_:
    saver.save(step, run.state, _data_iter(run.prepared))
  saver.close()


def _run(prepared, **overrides):
  run = Run(prepared, (8, 1, 1), **overrides)
  run.prepared = prepared
  return run


def _restore(run, directory):
  return checkpoints.Checkpointer(str(directory), max_to_keep=5).restore_latest(
      run.program.abstract, _data_iter(run.prepared))


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit())


def _corrupt(step_dir):
  for f in (step_dir / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"garbage")


def _two_step_run(prepared, tmp_path, **fields):
  """(config, workdir) of a finished 2-step smoke run with `fields` set."""
  config = prepared[0].copy_and_resolve_references()
  config.update(fields)
  config.num_train_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 100
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  train_in(config, workdir, prepared)
  return config, workdir


@pytest.mark.parametrize("overrides,names", [
    ({"model.emb_dim": 64},
     r"params\.\S+\.value: shape \(32, 4, 8\) saved, \(64, 4, 8\) now"),
    ({"grad_clip_norm": 0.0}, r"optimizer\.opt_state\.\S+: saved, not in the"),
    ({"grad_accum_steps": 2},
     r"optimizer\.opt_state\.mini_step: in the config's state, not saved"),
])
def test_a_checkpoint_that_does_not_fit_stops_the_restore(prepared, tmp_path,
                                                          overrides, names):
  _save(_run(prepared), tmp_path, 1, 2)
  with pytest.raises(checkpoints.CheckpointMismatchError, match=names):
    _restore(_run(prepared, **overrides), tmp_path)
  assert _steps(tmp_path) == [1, 2]  # Neither deleted nor moved aside.


def test_a_checkpoint_of_another_process_count_does_not_fit(prepared, tmp_path):
  run = _run(prepared)
  _save(run, tmp_path, 1)
  data = tmp_path / "checkpoints/1/data"
  (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
  integrity.write_manifest(tmp_path / "checkpoints/1")  # As a 2-process run wrote it.
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="saved by 2 processes, 1 now"):
    _restore(run, tmp_path)


def test_unreadable_latest_is_moved_aside_and_its_step_saved_again(prepared,
                                                                   tmp_path):
  run = _run(prepared)
  _save(run, tmp_path, 1, 2)
  _corrupt(tmp_path / "checkpoints/2")
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=5)
  restored, step = saver.restore_latest(run.program.abstract, _data_iter(prepared))
  assert step == 1 and restored is not None and saver.last_good == 1
  assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints").glob("2.corrupt-*")
          ] == ["2"]
  assert saver.manager.all_steps() == [1]
  saver.save(2, run.state, _data_iter(prepared))  # No "step 2 already exists".
  saver.close()
  assert _steps(tmp_path) == [1, 2]
  assert layout.checkpoint_steps(tmp_path / "checkpoints") == [1, 2]


def test_processes_agree_to_skip_a_step_another_process_cannot_read(
    prepared, tmp_path, monkeypatch):
  run = _run(prepared)
  _save(run, tmp_path, 1, 2)
  # What the other process reports, in call order: step 2's metadata fits, its
  # restore failed there; step 1 fits and restores.
  peer = [0, 1, 0, 0]
  monkeypatch.setattr(checkpoints, "_agree", lambda flag: max(flag, peer.pop(0)))
  _, step = _restore(run, tmp_path)
  assert step == 1 and not peer
  assert list((tmp_path / "checkpoints").glob("2.corrupt-*"))


@pytest.mark.slow  # Runs the trainer twice.
def test_resume_with_another_model_stops_before_writing(prepared, tmp_path):
  config, workdir = _two_step_run(prepared, tmp_path)
  saved = {f: (workdir / f).read_bytes() for f in ("config.json", "run_info.json")}
  config.model.mlp_dim = 128
  config.num_train_steps = 4
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"(?s)mlp.*new --workdir.*model\.mlp_dim: 64 -> 128"):
    train_in(config, workdir, prepared)
  assert {f: (workdir / f).read_bytes() for f in saved} == saved
  assert _steps(workdir) == [2]


@pytest.mark.slow  # Runs the trainer twice.
def test_corrupt_latest_checkpoint_resumes_from_the_one_before(prepared, tmp_path):
  config = prepared[0].copy_and_resolve_references()
  config.num_train_steps, config.checkpoint_every_steps = 4, 2
  config.eval_every_steps = 100
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  train_in(config, workdir, prepared)
  _corrupt(workdir / "checkpoints/4")
  config.num_train_steps = 6
  assert train_in(config, workdir, prepared)["step"] == 6
  assert _steps(workdir) == [2, 4, 6]
  assert len(list((workdir / "checkpoints").glob("4.corrupt-*"))) == 1
  rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 3, 4, 5, 6]


def test_a_second_run_on_a_locked_workdir_stops(tmp_path):
  path = lock.acquire(tmp_path)
  holder = json.loads(path.read_text())
  assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
  with pytest.raises(lock.WorkdirLockedError, match=f"PID {os.getpid()} on host"):
    lock.acquire(tmp_path)
  lock.release(path)
  assert not path.exists()
  lock.release(lock.acquire(tmp_path))


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / lock.LOCK_FILE).write_text(json.dumps(
      {"pid": dead.pid, "host": socket.gethostname()}))
  path = lock.acquire(tmp_path)
  assert json.loads(path.read_text())["pid"] == os.getpid()
  lock.release(path)


def _bound_workdir(prepared, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  proto = (prepared[1] / "spm.model").read_bytes()
  (workdir / "spm.model").write_bytes(proto)
  tokenizer_lib.bind_to_run(workdir, proto)
  return workdir


def test_load_from_workdir_checks_the_recorded_tokenizer(prepared, tmp_path):
  workdir = _bound_workdir(prepared, tmp_path)
  record = json.loads((workdir / "run.json").read_text())["tokenizer"]
  assert record["vocab_size"] == prepared[3].vocab_size
  assert tokenizer_lib.load_from_workdir(workdir).vocab_size == prepared[3].vocab_size
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"tokenizer": {**record, "sha256": "0" * 64}}))
  os.replace(other, workdir / "run.json")
  with pytest.raises(ValueError, match="not the tokenizer the checkpoints"):
    tokenizer_lib.load_from_workdir(workdir)
  (workdir / "spm.model").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="not a readable SentencePiece model"):
    tokenizer_lib.load_from_workdir(workdir)
  (workdir / "spm.model").unlink()
  with pytest.raises(FileNotFoundError, match="spm.model is missing"):
    tokenizer_lib.load_from_workdir(workdir)


def test_a_bound_run_never_retrains_its_tokenizer(prepared, tmp_path):
  workdir = _bound_workdir(prepared, tmp_path)
  (workdir / "spm.model").unlink()
  with pytest.raises(FileNotFoundError, match="spm.model is missing"):
    prepare.prepare(prepared[0], str(workdir))
  assert not (workdir / "spm.model").exists()


def test_training_refuses_another_tokenizer(prepared, tmp_path):
  workdir = _bound_workdir(prepared, tmp_path)
  record = json.loads((workdir / "run.json").read_text())
  record["tokenizer"]["sha256"] = "0" * 64
  (workdir / "run.json").write_text(json.dumps(record))
  with pytest.raises(run_record.TokenizerMismatchError, match="sha256 0000"):
    train_in(prepared[0], workdir, prepared)
  assert not (workdir / "config.json").exists()


@pytest.mark.slow  # Runs the trainer.
def test_resume_that_would_change_the_learning_rate_stops_before_writing(prepared,
                                                                          tmp_path):
  # A linear decay reaches 0 at num_train_steps: raising it on resume would move the
  # rate the run is at, and with it every remaining step.
  config, workdir = _two_step_run(prepared, tmp_path, schedule="linear",
                                  warmup_steps=1)
  saved = (workdir / "config.json").read_bytes()
  config.num_train_steps = 4
  with pytest.raises(validate.ScheduleChangeError,
                     match=r"(?s)step 2.*num_train_steps: 2 -> 4.*new --workdir"):
    train_in(config, workdir, prepared)
  assert (workdir / "config.json").read_bytes() == saved
  assert _steps(workdir) == [2]


def test_resume_keeps_the_replaced_config_and_says_what_changed(prepared, tmp_path):
  # rsqrt has no end point: more steps continue the same rate (multi30k_best.py).
  old = prepared[0].copy_and_resolve_references()
  old.schedule, old.num_train_steps = "rsqrt", 2
  (tmp_path / "config.json").write_text(old.to_json_best_effort())
  new = old.copy_and_resolve_references()
  new.num_train_steps, new.eval_every_steps = 4, 3
  changes = run_record.check_resumed_config(new, tmp_path, start_step=2)
  assert changes == ["eval_every_steps: 10 -> 3", "num_train_steps: 2 -> 4"]
  assert json.loads((tmp_path / "config.step2.json").read_text())[
      "num_train_steps"] == 2
  new.learning_rate *= 2
  with pytest.raises(validate.ScheduleChangeError, match=r"learning_rate"):
    run_record.check_resumed_config(new, tmp_path, start_step=2)


def test_a_workdir_from_an_older_config_schema_has_no_final_average(prepared,
                                                                    tmp_path):
  config = prepared[0].to_dict()
  del config["average_last_checkpoints"]  # A config.json from before the field.
  (tmp_path / "config.json").write_text(json.dumps(config, default=list))
  (tmp_path / "averaged_last5").mkdir()
  assert layout.final_average_dir(tmp_path) is None
