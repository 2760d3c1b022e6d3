"""Train-step benchmark on synthetic batches: step time, tokens/s and model-FLOP use.

  python -m bench.train_step --config=configs/transformer_base.py --batch_size=8

Prints one JSON line per config. Model-FLOP utilisation (MFU) counts 6 x parameters x
tokens per step (tokens = batch_size x length, each a source and a target position),
against a square matmul in the model's compute dtype timed in the same run. Needs only
JAX, Flax and optax: no data pipeline, no TFDS.
"""
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from bench import timing
from data import tokenizer as tokenizer_lib
from models import transformer
from parallel.sharding import Partitioner
from training import optimizer as optimizer_lib
from training import trainer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformer_base.py",
                                          "Config whose model and optimizer to time.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Rows per step.")
_LENGTH = flags.DEFINE_integer("length", 64, "Source and target tokens per row.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Shared vocabulary size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the compiling one.")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "Side of the peak-FLOP/s matmul.")


def matmul_flops_per_sec(n: int, dtype) -> float:
  """Achieved FLOP/s of an n x n x n matmul: the ceiling MFU is measured against."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  return 2 * n**3 / timing.time_calls(lambda: matmul(a, b), 5).median_s


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
  model_cfg = transformer.TransformerConfig.from_config(
      config.model, vocab_size=_VOCAB.value, pad_id=tokenizer_lib.PAD_ID)
  tx = optimizer_lib.create_optimizer(config)
  initial = trainer.create_train_state(model_cfg, tx, partitioner, config.seed)
  train_step, _ = trainer.compile_steps(config, initial, tx, partitioner)
  params = transformer.count_params(initial.state.params)
  local = synthetic_batch(_BATCH.value, _LENGTH.value, _VOCAB.value)
  batch = jax.device_put(local, partitioner.batch_sharding())
  state = initial.state

  def step():  # The state is donated: each call continues from the last one.
    nonlocal state
    state, metrics = train_step(state, batch)
    return metrics

  result = timing.time_calls(step, _STEPS.value)
  compile_s, step_s, metrics = result.first_s, result.median_s, result.output
  tokens = _BATCH.value * _LENGTH.value
  peak = matmul_flops_per_sec(_MATMUL.value, jnp.dtype(config.model.dtype))
  print(json.dumps({
      "config": config.model.to_dict(), "parameters": params,
      "batch_size": _BATCH.value, "length": _LENGTH.value,
      "compile_s": round(compile_s, 2), "step_ms": round(1000 * step_s, 2),
      "tokens_per_s": round(tokens / step_s, 1),
      "model_tflops_per_s": round(6 * params * tokens / step_s / 1e12, 4),
      "matmul_tflops_per_s": round(peak / 1e12, 4),
      "mfu": round(6 * params * tokens / step_s / peak, 4),
      "loss": float(metrics["loss"]), "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
