"""Integrity: every checkpoint and average carries a SHA256SUMS manifest that a restore
checks; changed bytes, non-finite parameters or a missing data-iterator state are
found, named, and (for a training checkpoint) moved aside so the run resumes.

A tiny train state (two arrays) and a grain iterator stand in for a model, as in
test_checkpoint_hygiene.py; the trainer test (slow) uses the smoke model.
"""
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storage import integrity
from storage import layout
from tests.conftest import train_smoke
from training import checkpoints
from training import steps
from training import trainer as trainer_lib


SIZE = 4096  # Random float32 values: stored uncompressed, as real weights are.


def _weights(value: float) -> jax.Array:
  noise = np.random.default_rng(int(value) if np.isfinite(value) else 0).normal(
      size=SIZE)
  return jnp.asarray(value + noise, jnp.float32)


def _state(value: float) -> steps.TrainState:
  return steps.TrainState(step=jnp.int32(1), params={"w": _weights(value)},
                          opt_state={"mu": jnp.zeros(4)})


def _abstract():
  return steps.TrainState(step=jnp.zeros([], jnp.int32),
                          params={"w": jnp.zeros(SIZE)}, opt_state={"mu": jnp.zeros(4)})


_ABSTRACT_PARAMS = {"w": jax.ShapeDtypeStruct((SIZE,), jnp.float32)}


def _data_iter():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _save(directory, values: dict[int, float]) -> None:
  saver = checkpoints.Checkpointer(str(directory), max_to_keep=5)
  for step, value in values.items():
    saver.save(step, _state(value), _data_iter())
  saver.close()


def flip_bytes(directory, under: str = "params") -> str:
  """Flips bytes in the middle of the largest file below DIRECTORY/under (its size
  unchanged, as a bad disk or copy would); returns its path."""
  biggest = max((p for p in (directory / under).rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  middle = len(data) // 2
  for i in range(max(0, middle - 8), min(len(data), middle + 8)):
    data[i] ^= 0xFF
  biggest.write_bytes(bytes(data))
  return str(biggest)


def test_every_saved_checkpoint_has_a_manifest_of_its_files(tmp_path):
  _save(tmp_path, {1: 1.0, 2: 2.0})
  for step in (1, 2):
    step_dir = tmp_path / "checkpoints" / str(step)
    listed = integrity.read_manifest(step_dir)
    on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
               if p.is_file() and p.name != integrity.MANIFEST}
    assert set(listed) == on_disk
    assert any(name.startswith("params/") for name in listed)
    assert integrity.verify(step_dir)


def test_flipped_bytes_are_found_and_the_run_resumes_from_the_one_before(tmp_path):
  _save(tmp_path, {1: 1.0, 2: 2.0})
  flip_bytes(tmp_path / "checkpoints/2")
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=5)
  restored, step = saver.restore_latest(_abstract(), _data_iter())
  saver.close()
  assert step == 1 and saver.last_good == 1
  np.testing.assert_array_equal(restored.params["w"], _weights(1.0))
  assert len(list((tmp_path / "checkpoints").glob("2.corrupt-*"))) == 1


def test_inference_restore_names_the_changed_file(tmp_path):
  directory = tmp_path / "averaged"
  layout.save_params(directory, 3, {"w": _weights(3.0)})
  changed = flip_bytes(directory / "3")
  with pytest.raises(integrity.IntegrityError, match=rf"(?s){changed}: sha256.*--step"):
    layout.restore_params(directory, 3, _ABSTRACT_PARAMS)


def test_non_finite_parameters_are_not_restored(tmp_path):
  _save(tmp_path, {1: 1.0, 2: float("nan")})
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=5)
  _, step = saver.restore_latest(_abstract(), _data_iter())
  saver.close()
  assert step == 1
  assert list((tmp_path / "checkpoints").glob("2.corrupt-*"))
  layout.save_params(tmp_path / "avg", 2, {"w": jnp.full(SIZE, jnp.inf)})
  with pytest.raises(integrity.IntegrityError, match=r"NaN or infinite.*\['w'\]"):
    layout.restore_params(tmp_path / "avg", 2, _ABSTRACT_PARAMS)


def test_a_checkpoint_without_its_data_state_is_moved_aside_not_a_mismatch(tmp_path):
  _save(tmp_path, {1: 1.0, 2: 2.0})
  for f in (tmp_path / "checkpoints/2/data").iterdir():
    f.unlink()
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=5)
  _, step = saver.restore_latest(_abstract(), _data_iter())  # No mismatch error.
  saver.close()
  assert step == 1
  assert list((tmp_path / "checkpoints").glob("2.corrupt-*"))


def test_a_checkpoint_from_before_manifests_still_restores(tmp_path):
  _save(tmp_path, {1: 1.0})
  (tmp_path / "checkpoints/1" / integrity.MANIFEST).unlink()
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=5)
  _, step = saver.restore_latest(_abstract(), _data_iter())
  saver.close()
  assert step == 1


def test_a_damaged_manifest_is_an_error_naming_its_line(tmp_path):
  _save(tmp_path, {1: 1.0})
  (tmp_path / "checkpoints/1" / integrity.MANIFEST).write_text("not a sum line\n")
  with pytest.raises(integrity.IntegrityError, match=r"SHA256SUMS:1 is not"):
    integrity.verify(tmp_path / "checkpoints/1")


@pytest.mark.slow  # Runs the trainer twice.
def test_divergence_names_the_last_checkpoint_that_restored_intact(prepared, tmp_path,
                                                                  monkeypatch):
  workdir = tmp_path / "run"
  workdir.mkdir()
  fields = {"checkpoint_every_steps": 2, "eval_every_steps": 100}
  train_smoke(prepared, workdir, num_train_steps=4, **fields)
  flip_bytes(workdir / "checkpoints/4")
  step_fn = trainer_lib.Trainer._step  # pylint: disable=protected-access

  def diverging_step(self, *args):
    state, metrics = step_fn(self, *args)
    return state, {**metrics, "loss": jnp.float32(jnp.nan)}
  monkeypatch.setattr(trainer_lib.Trainer, "_step", diverging_step)
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r"last good checkpoint .* is step 2 in"):
    train_smoke(prepared, workdir, num_train_steps=8, **fields)
