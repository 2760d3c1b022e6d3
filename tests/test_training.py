"""Train steps on meshes, checkpoint restore onto another mesh, overfitting, NaN stop."""
import json

import jax
import numpy as np
import pytest

import jax.numpy as jnp

from configs import smoke
from data import pipeline
from parallel.sharding import Partitioner
from tests.conftest import Run, train_in
from training import checkpoints
from training import state as state_lib
from training import steps
from training import trainer

ROWS, LENGTH = 16, 32
# Same math on 1 or 8 devices differs only by float32 reduction order.
RTOL, ATOL = 2e-5, 2e-6


def _data_iter(prepared, source=None):
  config, _, sources, tokenizer = prepared
  return iter(pipeline.train_dataset(source or sources["train"], tokenizer,
                                     batch_size=ROWS, max_length=LENGTH,
                                     seed=config.seed, shard_index=0, shard_count=1))


def _batches(prepared, n, source=None):
  it = _data_iter(prepared, source)
  return [next(it) for _ in range(n)]


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_the_program_lowers_without_data_or_arrays():
  """What a compile-only tool does: the abstract state and a batch of shapes only."""
  config = smoke.get_config()
  partitioner = Partitioner.from_config(config)
  program = state_lib.build_program(config, 1000, partitioner)
  leaves = jax.tree.leaves(program.abstract)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  rows = config.batch_tokens // config.data.max_length
  batch = {name: jax.ShapeDtypeStruct((rows, config.data.max_length), jnp.int32,
                                      sharding=partitioner.batch_sharding())
           for name in ("inputs", "targets", "inputs_segment_ids",
                        "targets_segment_ids", "inputs_positions",
                        "targets_positions")}
  with partitioner.activate():
    lowered = program.train_step.jitted.lower(program.abstract, batch)
  # The new state: the shapes, dtypes and shardings it came in with (it is donated).
  assert jax.tree.leaves(lowered.out_info[0]) == leaves


@pytest.mark.parametrize("mesh_shape", [(4, 2, 1), (2, 2, 2)])
def test_sharded_steps_match_one_device(prepared, mesh_shape):
  batches = _batches(prepared, 3)
  # Adam moves a weight whose gradient is rounding noise (|g| ~ eps) by about the
  # learning rate, in the direction the noise picks: with eps 1e-9 and 8-bit dropout
  # draws, one weight differed by 2e-4 after 3 steps. eps 1e-6 keeps rounding small.
  single = Run(prepared, (1, 1, 1), jax.devices()[:1], adam_eps=1e-6)
  sharded = Run(prepared, mesh_shape, adam_eps=1e-6)
  np.testing.assert_allclose(sharded.train(batches), single.train(batches),
                             rtol=RTOL)
  for a, b in zip(_params(sharded.state), _params(single.state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  # Parameters (and the Adam moments) are split as the rules table says.
  embedding = sharded.state.params["embed"]["embedding"].value
  assert embedding.sharding.spec == sharded.partitioner.spec(("vocab", "embed"),
                                                            embedding.shape)
  data, fsdp, tensor = mesh_shape
  rows = embedding.shape[0] // tensor
  assert embedding.sharding.shard_shape(embedding.shape) == (
      rows, embedding.shape[1] // fsdp)
  mu = sharded.state.opt_state[1][0].mu["embed"]["embedding"].value
  assert mu.sharding == embedding.sharding


def test_adafactor_trains_on_a_sharded_mesh(prepared):
  """Factored moments are not shaped like their parameters: they are replicated."""
  run = Run(prepared, (2, 2, 2), **{"optimizer": "adafactor"})
  losses = run.train(_batches(prepared, 2))
  assert all(np.isfinite(losses))


def test_restore_onto_another_mesh_and_continue(prepared, tmp_path):
  batches = _batches(prepared, 3)
  first = Run(prepared, (4, 2, 1))
  first.train(batches[:2])
  data_iter = _data_iter(prepared)
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  saver.save(2, first.state, data_iter)
  saver.close()
  expected = first.train(batches[2:])

  second = Run(prepared, (8, 1, 1))
  restored, step = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2
                                            ).restore_latest(second.program.abstract,
                                                             data_iter)
  assert step == 2 and int(restored.step) == 2
  embedding = restored.params["embed"]["embedding"].value
  assert embedding.sharding.mesh.shape == second.partitioner.mesh.shape
  second.state = restored
  np.testing.assert_allclose(second.train(batches[2:]), expected, rtol=RTOL)


def test_unreadable_latest_checkpoint_falls_back(prepared, tmp_path):
  run = Run(prepared, (8, 1, 1))
  data_iter = _data_iter(prepared)
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=3)
  saver.save(1, run.state, data_iter)
  saver.save(2, run.state, data_iter)
  saver.close()
  for f in (tmp_path / "checkpoints/2/params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"garbage")
  restored, step = checkpoints.Checkpointer(str(tmp_path), max_to_keep=3
                                            ).restore_latest(run.program.abstract,
                                                             data_iter)
  assert step == 1 and restored is not None


@pytest.mark.slow
def test_overfits_64_pairs(prepared):
  source = [prepared[2]["train"][i] for i in range(64)]
  run = Run(prepared, (8, 1, 1), **{"model.dropout_rate": 0.0, "label_smoothing": 0.0,
                                    "learning_rate": 1e-2, "warmup_steps": 10})
  losses = run.train(_batches(prepared, 150, source))
  assert losses[-1] < 0.5 < losses[0], losses[::10]


def test_label_smoothed_loss_is_zero_at_the_smoothed_target():
  vocab, eps = 5, 0.1
  targets = np.array([[1, 3]])
  soft = np.full((1, 2, vocab), eps / (vocab - 1))
  soft[0, 0, 1] = soft[0, 1, 3] = 1 - eps
  loss, weight = steps.cross_entropy(np.log(soft), targets, np.ones((1, 2)), eps)
  assert abs(float(loss)) < 1e-5 and float(weight) == 2.0
  worse, _ = steps.cross_entropy(np.zeros((1, 2, vocab)), targets, np.ones((1, 2)), eps)
  assert float(worse) > 0.1


def _nan_at(bad_step: int, loss: bool = True):
  """A train step whose update at `state.step == bad_step` makes params NaN (and the
  loss too if `loss`; else the loss stays finite and only the parameters diverge)."""
  original = steps.train_step

  def train_step(state, batch, **kwargs):
    new_state, metrics = original(state, batch, **kwargs)
    poison = lambda x: jnp.where(state.step == bad_step, jnp.nan, x)
    if loss:
      metrics = {**metrics, "loss": poison(metrics["loss"])}
    return new_state.replace(params=jax.tree.map(poison, new_state.params)), metrics
  return train_step


@pytest.mark.slow
@pytest.mark.parametrize("bad_step,in_loss,what", [
    (7, True, "step 8.*last good checkpoint.*is step 5"),
    # The parameters of step 10, which is saved, are NaN; its loss is not.
    (9, False, "parameters.*step 10.*last good checkpoint.*is step 5")])
def test_nan_stops_training_and_keeps_last_checkpoint(prepared, tmp_path,
                                                      monkeypatch, bad_step,
                                                      in_loss, what):
  config = prepared[0].copy_and_resolve_references()
  config.num_train_steps = 12
  config.checkpoint_every_steps = 5
  config.eval_every_steps = 100
  monkeypatch.setattr(steps, "train_step", _nan_at(bad_step, loss=in_loss))
  workdir = tmp_path / "run"
  (workdir).mkdir()
  (workdir / "spm.model").write_bytes((prepared[1] / "spm.model").read_bytes())
  with pytest.raises(trainer.NonFiniteLossError, match=what):
    train_in(config, workdir, prepared)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [5]
  run = Run(prepared, (8, 1, 1))
  data_iter = _data_iter(prepared)
  restored, step = checkpoints.Checkpointer(str(workdir), max_to_keep=2
                                            ).restore_latest(run.program.abstract,
                                                             data_iter)
  assert step == 5
  assert all(np.isfinite(p).all() for p in _params(restored))


def test_keeps_the_last_checkpoints_and_the_best_by_bleu(prepared, tmp_path):
  run = Run(prepared, (8, 1, 1))
  data_iter = _data_iter(prepared)
  saver = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  for step, bleu in ((1, 10.0), (2, 30.0), (3, 20.0), (4, None), (5, 15.0)):
    saver.save(step, run.state, data_iter, bleu=bleu)
  saver.close()
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4, 5]


@pytest.mark.slow
def test_training_logs_validation_bleu(trained_workdir):
  rows = [json.loads(line) for line in
          (trained_workdir / "metrics.jsonl").read_text().splitlines()]
  validation = [r for r in rows if r["split"] == "validation"]
  assert [r["step"] for r in validation] == [4]
  assert {"loss", "perplexity", "bleu", "sacrebleu", "chrf"} <= set(validation[0])
  assert (trained_workdir / "curves.png").stat().st_size > 0
