"""Checkpoint hygiene: leftover temporary folders, failed asynchronous saves, full disk.

A tiny train state (two arrays) and a grain iterator stand in for a model: these are
properties of `training.checkpoints.Checkpointer` and orbax, not of the network.
"""
import errno
import json
import time

from etils import epath
import grain
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import train_in
from training import checkpoints
from training import steps


def _state(value: float) -> steps.TrainState:
  return steps.TrainState(step=jnp.int32(int(value)), params={"w": jnp.full(4, value)},
                          opt_state={"mu": jnp.zeros(4)})


def _abstract():
  return steps.TrainState(
      step=jnp.zeros([], jnp.int32), params={"w": jnp.zeros(4)},
      opt_state={"mu": jnp.zeros(4)})


def _data_iter():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _entries(workdir):
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def _temporary_folders_gone(workdir, seconds: float = 30) -> bool:
  """Orbax deletes them in the background from the manager's creation on."""
  deadline = time.monotonic() + seconds
  while any("tmp" in name for name in _entries(workdir)):
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def _full_disk_at(monkeypatch, step: int) -> None:
  """Writes into step `step`'s checkpoint raise ENOSPC, as on a full disk.

  The params item's _METADATA is written by orbax's background thread after
  `save()` has returned, so the failure happens in the asynchronous part.
  """
  path_cls = type(epath.Path("/"))
  write_text = path_cls.write_text

  def failing_write_text(self, *args, **kwargs):
    if f"/{step}.orbax-checkpoint-tmp/" in str(self) and self.name == "_METADATA":
      raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return write_text(self, *args, **kwargs)
  monkeypatch.setattr(path_cls, "write_text", failing_write_text)


def test_leftover_temporary_checkpoints_are_deleted_at_start(tmp_path):
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  saver.save(1, _state(1.0), _data_iter())
  saver.close()
  # What a run killed in the middle of saving step 2 leaves behind.
  leftover = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"
  (leftover / "params.orbax-checkpoint-tmp").mkdir(parents=True)
  (leftover / "params.orbax-checkpoint-tmp" / "ocdbt.process_0").write_bytes(b"half")

  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  restored, step = saver.restore_latest(_abstract(), _data_iter())
  assert _temporary_folders_gone(tmp_path)
  saver.close()
  assert _entries(tmp_path) == ["1"]
  assert step == 1 and float(restored.params["w"][0]) == 1.0


def test_a_full_disk_stops_at_once_and_keeps_the_last_checkpoint(tmp_path,
                                                                monkeypatch):
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=1)
  saver.save(1, _state(1.0), _data_iter())
  saver.wait()
  _full_disk_at(monkeypatch, 2)
  saver.save(2, _state(2.0), _data_iter())  # Returns; the write fails behind it.
  deadline = time.monotonic() + 30
  with pytest.raises(OSError) as failure:  # Within a few steps' checks, not at save 3.
    while time.monotonic() < deadline:
      saver.check()
      time.sleep(0.05)
  assert failure.value.errno == errno.ENOSPC
  assert "checkpoint 2" in str(failure.value.__notes__)
  assert "newest being step 1" in str(failure.value.__notes__)
  assert saver.last_good == 1
  saver.close()
  monkeypatch.undo()  # The disk has space again.

  # Step 1 was not deleted by keep-last-1, and a new run resumes from it.
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=1)
  restored, step = saver.restore_latest(_abstract(), _data_iter())
  assert step == 1 and saver.last_good == 1
  np.testing.assert_array_equal(restored.params["w"], np.full(4, 1.0))
  assert _temporary_folders_gone(tmp_path)  # The failed save's folder.
  assert _entries(tmp_path) == ["1"]
  saver.save(2, _state(2.0), _data_iter())
  saver.close()
  assert _entries(tmp_path) == ["2"]


def test_a_failed_save_is_raised_by_close(tmp_path, monkeypatch):
  """The last save of a run fails: the run does not end as if it had succeeded."""
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  _full_disk_at(monkeypatch, 1)
  saver.save(1, _state(1.0), _data_iter())
  with pytest.raises(OSError, match="No space left") as failure:
    saver.close()
  assert "no checkpoint was saved before it" in str(failure.value.__notes__)


@pytest.mark.slow  # Runs the trainer twice.
def test_training_stops_on_a_full_disk_and_resumes_from_the_last_checkpoint(
    prepared, tmp_path, monkeypatch):
  config = prepared[0].copy_and_resolve_references()
  config.num_train_steps, config.checkpoint_every_steps = 8, 2
  config.eval_every_steps = 100
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  _full_disk_at(monkeypatch, 4)
  with pytest.raises(OSError, match="No space left") as failure:
    train_in(config, workdir, prepared)
  assert "Saving checkpoint 4" in str(failure.value.__notes__)
  rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in rows) < 8  # Stopped, did not train on to the end.
  monkeypatch.undo()
  assert train_in(config, workdir, prepared)["step"] == 8
  assert _entries(workdir) == ["2", "4", "6", "8"]
