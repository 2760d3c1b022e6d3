"""Pure train and eval steps over pytrees, jitted with shardings by `training.state`.

The model lives as (graphdef, params): the step merges them into a Transformer
inside the trace, so the jitted function takes and returns plain pytrees and the
train state can be donated, sharded and checkpointed as one tree. The model keeps no
other state: dropout keys come in at call time, derived from (seed, step).
"""
import math
from typing import Any

import flax
from flax import nnx
import jax
import jax.extend.random
import jax.numpy as jnp
import optax


_THREEFRY = jax.extend.random.threefry_prng_impl


def _packed_threefry_bits(draw_bits: int):
  """Threefry `random_bits` that spends one 32-bit word on 32 // draw_bits draws.

  Each 32-bit draw holds `draw_bits` random bits at the top and zeros below. A
  uniform float built from it takes 2**draw_bits values, k / 2**draw_bits, which
  is plenty for a Bernoulli mask (keep probability rounded up to a multiple of
  2**-draw_bits) but not for sampling in general: keys of these generators are for
  dropout only. On XLA:CPU a mask costs what its threefry words cost (~13 ns a word
  on one core, rbg alike), so 16-bit draws halve it and 8-bit draws quarter it.
  """
  def random_bits(key, bit_width, shape):
    if bit_width != 32:
      return _THREEFRY.random_bits(key, bit_width, shape)
    size = math.prod(shape)
    words = _THREEFRY.random_bits(key, 32, (-(-size // (32 // draw_bits)),))
    draws = jax.lax.bitcast_convert_type(words, jnp.dtype(f"uint{draw_bits}"))
    return (draws.reshape(-1)[:size].astype(jnp.uint32) << (32 - draw_bits)
            ).reshape(shape)
  return random_bits


def _packed_threefry(draw_bits: int):
  return jax.extend.random.define_prng_impl(
      key_shape=_THREEFRY.key_shape, seed=_THREEFRY.seed, split=_THREEFRY.split,
      fold_in=_THREEFRY.fold_in, random_bits=_packed_threefry_bits(draw_bits),
      name=f"threefry2x32_{draw_bits}bit", tag=f"fry{draw_bits}")


# Generators a dropout key may use, by config.dropout_rng_impl: JAX's own (names as
# in `jax.random.key(..., impl=...)`) and threefry with packed low-precision draws.
DROPOUT_RNG_IMPLS = {
    "threefry2x32": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg",
    "threefry2x32_16bit": _packed_threefry(16),
    "threefry2x32_8bit": _packed_threefry(8),
}


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: exact resume needs exactly this, plus the data state."""
  step: jax.Array  # [] int32, number of optimizer steps taken.
  params: nnx.State  # nnx.Param leaves of the model.
  opt_state: optax.OptState


def cross_entropy(logits, targets, weights, label_smoothing: float = 0.0):
  """Sums of label-smoothed cross-entropy and of weights, over [batch, length].

  The smoothed target puts 1 - label_smoothing on the reference token and spreads
  the rest uniformly; its entropy is subtracted so a perfect model scores 0.
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence)
                 + (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = low + (confidence - low) * jax.nn.one_hot(targets, vocab)  # [b, l, vocab]
  loss = optax.softmax_cross_entropy(logits, soft) - normalizer  # [batch, length]
  return (loss * weights).sum(), weights.sum()


def _weights(batch):
  """1.0 at real target tokens, 0.0 at padding: [batch, length]."""
  return (batch["targets_segment_ids"] > 0).astype(jnp.float32)


def _forward(graphdef, params, batch, *, deterministic: bool, rngs=None):
  model = nnx.merge(graphdef, params)
  return model(batch["inputs"], batch["targets"],
               inputs_segment_ids=batch["inputs_segment_ids"],
               targets_segment_ids=batch["targets_segment_ids"],
               inputs_positions=batch["inputs_positions"],
               targets_positions=batch["targets_positions"],
               deterministic=deterministic, rngs=rngs)


def dropout_key(seed: int, step: jax.Array, impl: str = "threefry2x32") -> jax.Array:
  """The step's dropout key: (seed, step) folded into a key of generator `impl`.

  Keys from (seed, step) make a resumed run draw the same masks. `impl` names an
  entry of DROPOUT_RNG_IMPLS; the key's type carries the generator to every
  `jax.random` call that draws masks, while parameter initialisation keeps JAX's
  default. Masks are about a fifth of the default model's step on CPU with threefry;
  'rbg' is no cheaper there, 'threefry2x32_8bit' cuts the step by about 13%
  (docs/multi30k.md).
  """
  return jax.random.fold_in(jax.random.key(seed, impl=DROPOUT_RNG_IMPLS[impl]), step)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef,
               tx: optax.GradientTransformation, schedule, seed: int,
               label_smoothing: float, dropout_rng_impl: str = "threefry2x32"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and scalar metrics.

  Dropout masks come from `dropout_key(seed, step, dropout_rng_impl)`.
  """
  key = dropout_key(seed, state.step, dropout_rng_impl)
  weights = _weights(batch)

  def loss_fn(params):
    logits = _forward(graphdef, params, batch, deterministic=False,
                      rngs=nnx.Rngs(dropout=key))
    loss_sum, weight_sum = cross_entropy(logits, batch["targets"], weights,
                                         label_smoothing)
    loss = loss_sum / jnp.maximum(weight_sum, 1.0)  # Token-weighted mean.
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
  metrics = {
      "loss": loss,
      "accuracy": accuracy / jnp.maximum(weights.sum(), 1.0),
      "tokens": weights.sum(),
      "grad_norm": optax.global_norm(grads),
      "learning_rate": schedule(state.step),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict[str, jax.Array], *, graphdef
              ) -> dict[str, jax.Array]:
  """Sums over a batch of unsmoothed loss, correct tokens and tokens."""
  weights = _weights(batch)
  logits = _forward(graphdef, params, batch, deterministic=True)
  loss_sum, weight_sum = cross_entropy(logits, batch["targets"], weights)
  correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
  return {"loss_sum": loss_sum, "correct": correct, "tokens": weight_sum}


def summarize_eval(sums: dict[str, Any]) -> dict[str, float]:
  """Token-weighted loss, accuracy and perplexity from summed eval metrics."""
  tokens = max(float(sums["tokens"]), 1.0)
  loss = float(sums["loss_sum"]) / tokens
  return {"loss": loss, "accuracy": float(sums["correct"]) / tokens,
          "perplexity": float(jnp.exp(loss))}
