"""Train-step benchmark on synthetic batches: step time, tokens/s and model-FLOP use.

  python -m bench.train_step --config=configs/transformer_base.py --batch_size=8
  python -m bench.train_step --config=configs/default.py --batch_size=64 \
      --vocab_size=8000 --dropout_rng_impls=threefry2x32,rbg

Prints one JSON line per dropout PRNG timed (one, the config's, unless
--dropout_rng_impls names several). Model-FLOP utilisation (MFU) counts 6 x parameters
x tokens per step (tokens = batch_size x length, each a source and a target position),
against a square matmul in the model's compute dtype: the fraction of the measured
matmul peak the step reaches (`mfu`, in wall time; `mfu_cpu_time`, in this process's
CPU seconds). The steps and the matmul are timed in turn, round after round, so a
shared machine's load drifts onto all of them alike and their medians compare. Needs
only JAX, Flax and optax: no data pipeline, no TFDS.
"""
from collections.abc import Callable
import json
import statistics
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from bench import timing
from models import transformer
from parallel.sharding import Partitioner
from training import state as state_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformer_base.py",
                                          "Config whose model and optimizer to time.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Rows per step.")
_LENGTH = flags.DEFINE_integer("length", 64, "Source and target tokens per row.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Shared vocabulary size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the compiling one.")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "Side of the peak-FLOP/s matmul.")
_IMPLS = flags.DEFINE_list(
    "dropout_rng_impls", [], "Dropout PRNGs (config.dropout_rng_impl values) to time"
    " side by side; empty: the config's.")


def matmul_call(n: int, dtype) -> Callable[[], jax.Array]:
  """An n x n x n matmul (2 n^3 FLOPs): the FLOP/s ceiling MFU is measured against."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  return lambda: matmul(a, b)


def time_in_turn(calls: dict[str, Callable[[], Any]], repeats: int
                 ) -> tuple[dict[str, timing.Timing], dict[str, float]]:
  """`timing.time_calls` for several calls, each called once per round, in turn.

  On a machine shared with other jobs the load drifts over seconds; calls timed in
  alternation see the same drift, calls timed one after the other do not. Returns the
  wall-clock timings and each call's median CPU seconds (this process, all threads),
  which other jobs on the machine inflate far less than wall time.
  """
  first, times, cpu, outputs = {}, {n: [] for n in calls}, {n: [] for n in calls}, {}
  for repeat in range(repeats + 1):  # Round 0 compiles.
    for name, call in calls.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      outputs[name] = jax.block_until_ready(call())
      if repeat:
        times[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)
      else:
        first[name] = time.perf_counter() - start
  return ({name: timing.Timing(first_s=first[name], times=times[name],
                               output=outputs[name]) for name in calls},
          {name: statistics.median(cpu[name]) for name in calls})


def synthetic_batch(batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
  """Unpadded random rows: every position counts as a real token."""
  rng = np.random.default_rng(0)
  tokens = lambda: rng.integers(3, vocab, (batch, length), dtype=np.int32)
  ones = np.ones((batch, length), np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  return {"inputs": tokens(), "targets": tokens(), "inputs_segment_ids": ones,
          "targets_segment_ids": ones, "inputs_positions": positions,
          "targets_positions": positions}


def main(argv):
  del argv
  config = _CONFIG.value
  partitioner = Partitioner.from_config(config)
  local = synthetic_batch(_BATCH.value, _LENGTH.value, _VOCAB.value)
  batch = jax.device_put(local, partitioner.batch_sharding())
  calls = {}
  for impl in _IMPLS.value or [config.dropout_rng_impl]:
    impl_config = config.copy_and_resolve_references()
    impl_config.dropout_rng_impl = impl
    program = state_lib.build_program(impl_config, _VOCAB.value, partitioner)
    state = program.init()
    params = transformer.count_params(state.params)
    calls[impl] = _stepper(program.train_step, state, batch)
  calls["matmul"] = matmul_call(_MATMUL.value, jnp.dtype(config.model.dtype))
  timings, cpu_s = time_in_turn(calls, _STEPS.value)
  peak = 2 * _MATMUL.value**3 / timings.pop("matmul").median_s
  tokens = _BATCH.value * _LENGTH.value
  for impl, result in timings.items():
    step_s = result.median_s
    print(json.dumps({
        "config": config.model.to_dict(), "dropout_rng_impl": impl,
        "parameters": params, "batch_size": _BATCH.value, "length": _LENGTH.value,
        "compile_s": round(result.first_s, 2), "step_ms": round(1000 * step_s, 2),
        "step_cpu_ms": round(1000 * cpu_s[impl], 2),
        "matmul_cpu_ms": round(1000 * cpu_s["matmul"], 2),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflops_per_s": round(6 * params * tokens / step_s / 1e12, 4),
        "matmul_tflops_per_s": round(peak / 1e12, 4),
        "mfu": round(6 * params * tokens / step_s / peak, 4),
        # The same ratio in CPU seconds: what a shared machine's load distorts least.
        "mfu_cpu_time": round(6 * params * tokens * cpu_s["matmul"]
                              / (2 * _MATMUL.value**3 * cpu_s[impl]), 4),
        "loss": float(result.output["loss"]), "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(), "jax": jax.__version__}))


def _stepper(train_step, state, batch) -> Callable[[], dict[str, jax.Array]]:
  """One train step per call; the state is donated, so each continues the last."""
  def step():
    nonlocal state
    state, metrics = train_step(state, batch)
    return metrics
  return step


if __name__ == "__main__":
  app.run(main)
