"""Learning-rate schedules, their config checks, and the dropout-key generator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import smoke
from parallel.sharding import Partitioner
from training import optimizer
from training import steps
from training import state as state_lib
from training import validate

LR, WARMUP, TOTAL = 3e-3, 200, 1100


@pytest.mark.parametrize("kind", optimizer.SCHEDULES)
def test_every_schedule_warms_up_linearly_to_the_peak(kind):
  schedule = optimizer.learning_rate_schedule(LR, WARMUP, kind, TOTAL)
  np.testing.assert_allclose(schedule(0), LR / WARMUP, rtol=1e-5)  # Not 0: no lost step.
  np.testing.assert_allclose(schedule(WARMUP // 2 - 1), LR / 2, rtol=1e-5)
  np.testing.assert_allclose(schedule(WARMUP - 1), LR, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decayed_schedules_reach_zero_at_the_end_and_stay_there(kind):
  schedule = optimizer.learning_rate_schedule(LR, WARMUP, kind, TOTAL)
  np.testing.assert_allclose(schedule(WARMUP), LR, rtol=1e-5)
  values = np.array([schedule(step) for step in range(WARMUP, TOTAL + 1)])
  assert np.all(np.diff(values) <= 0)  # Monotone after warmup.
  assert 0 < schedule(TOTAL - 1) < LR / 100  # The last update still moves...
  assert schedule(TOTAL) == 0 and schedule(TOTAL + 100) == 0  # ...then nothing.


def test_linear_and_cosine_are_half_way_at_the_middle_of_the_decay():
  middle = (WARMUP + TOTAL) // 2  # 650: 450 updates into a 900-update decay.
  for kind in ("linear", "cosine"):
    schedule = optimizer.learning_rate_schedule(LR, WARMUP, kind, TOTAL)
    np.testing.assert_allclose(schedule(middle), LR / 2, rtol=1e-5)
  linear = optimizer.learning_rate_schedule(LR, WARMUP, "linear", TOTAL)
  cosine = optimizer.learning_rate_schedule(LR, WARMUP, "cosine", TOTAL)
  assert cosine(WARMUP + 100) > linear(WARMUP + 100)  # Cosine stays high longer...
  assert cosine(TOTAL - 100) < linear(TOTAL - 100)  # ...and ends lower.


def test_rsqrt_is_unchanged():
  """The open-ended schedule every earlier run used: lr * sqrt(warmup / (step + 1))."""
  schedule = optimizer.learning_rate_schedule(LR, WARMUP)
  for step in (WARMUP - 1, 799, TOTAL, 10 * TOTAL):
    np.testing.assert_allclose(schedule(step), LR * np.sqrt(WARMUP / (step + 1)),
                               rtol=1e-5)


def test_schedule_from_config_decays_over_optimizer_updates():
  config = default.get_config()
  config.schedule = "linear"
  config.num_train_steps = 1100
  config.grad_accum_steps = 2  # 1100 train steps are 550 updates.
  schedule = optimizer.schedule_from_config(config)
  assert schedule(550) == 0 and schedule(549) > 0


def test_bad_schedules_are_errors():
  with pytest.raises(ValueError, match="use one of"):
    optimizer.learning_rate_schedule(LR, WARMUP, "exponential", TOTAL)
  with pytest.raises(ValueError, match="must exceed warmup_steps"):
    optimizer.learning_rate_schedule(LR, WARMUP, "linear", WARMUP)


@pytest.mark.parametrize("field,value", [
    ("schedule", "step"), ("dropout_rng_impl", "philox"), ("num_train_steps", 5)])
def test_config_checks_name_the_field(field, value):
  config = smoke.get_config()  # 5 warmup steps: 5 train steps leave none to decay.
  config.schedule = "cosine"
  config.update_from_flattened_dict({field: value})
  with pytest.raises(validate.ConfigError, match=rf"config\.{field}="):
    validate.validate_config(config)


def test_the_default_dropout_key_is_the_key_earlier_runs_used():
  """threefry2x32 keeps masks (and so resumed and reproduced runs) bit for bit."""
  step = jnp.int32(7)
  old = jax.random.fold_in(jax.random.key(0), step)
  assert np.array_equal(jax.random.key_data(steps.dropout_key(0, step)),
                        jax.random.key_data(old))


@pytest.mark.parametrize("impl", steps.DROPOUT_RNG_IMPLS)
def test_dropout_keys_draw_masks_of_the_right_rate_and_depend_on_the_step(impl):
  draw = jax.jit(lambda step: jax.random.bernoulli(
      steps.dropout_key(0, step, impl), 0.9, (257, 255)))  # Odd size: a part word.
  first, again, second = draw(jnp.int32(1)), draw(jnp.int32(1)), draw(jnp.int32(2))
  assert np.array_equal(first, again)  # (seed, step) decides the mask: exact resume.
  assert not np.array_equal(first, second)
  assert abs(float(first.mean()) - 0.9) < 0.005


@pytest.mark.parametrize("bits", [8, 16])
def test_packed_draws_are_uniform_on_their_grid(bits):
  """k / 2**bits, every value equally likely: what a Bernoulli mask needs."""
  key = steps.dropout_key(3, jnp.int32(0), f"threefry2x32_{bits}bit")
  uniform = np.asarray(jax.random.uniform(key, (200_000,)))
  levels = uniform * 2**bits
  np.testing.assert_array_equal(levels, np.round(levels))
  counts = np.bincount(levels.astype(np.int64) >> (bits - 4), minlength=16)
  assert counts.min() > 0.95 * len(uniform) / 16  # 16 bins, each within 5%.
  assert np.isclose(float(jax.random.bernoulli(key, 0.9, (200_000,)).mean()),
                    np.ceil(0.9 * 2**bits) / 2**bits, atol=0.003)


def test_the_config_dropout_rng_impl_and_schedule_reach_the_train_step():
  """state.build_program passes both: other masks, other loss; the logged rate."""
  config = smoke.get_config()
  config.schedule = "linear"
  partitioner = Partitioner.from_config(config, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  ones = np.ones((4, 16), np.int32)
  batch = {"inputs": rng.integers(3, 64, (4, 16), dtype=np.int32),
           "targets": rng.integers(3, 64, (4, 16), dtype=np.int32),
           "inputs_segment_ids": ones, "targets_segment_ids": ones,
           "inputs_positions": np.cumsum(ones, 1) - 1,
           "targets_positions": np.cumsum(ones, 1) - 1}
  losses = {}
  for impl in ("threefry2x32", "rbg"):
    config.dropout_rng_impl = impl
    program = state_lib.build_program(config, 64, partitioner)
    train_step, state = program.train_step, program.init()
    for _ in range(config.warmup_steps + 1):
      state, metrics = train_step(state, batch)
    losses[impl] = float(metrics["loss"])
    np.testing.assert_allclose(  # The decayed schedule, one update past warmup.
        metrics["learning_rate"], optimizer.schedule_from_config(config)(
            config.warmup_steps), rtol=1e-5)
  assert losses["threefry2x32"] != losses["rbg"]
