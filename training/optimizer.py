"""The optimizer: AdamW (or Adafactor), warmup then inverse-square-root decay, clipping."""
import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, warmup_steps: int):
  """Linear warmup to `learning_rate`, then decay as 1/sqrt(step) (Vaswani et al.)."""
  warmup_steps = max(warmup_steps, 1)

  def schedule(step):
    step = jnp.maximum(step + 1, 1).astype(jnp.float32)  # optax counts from 0.
    return learning_rate * jnp.minimum(step / warmup_steps,
                                       jnp.sqrt(warmup_steps / step))
  return schedule


def create_optimizer(config) -> optax.GradientTransformation:
  """The update rule named by `config.optimizer`, with global-norm gradient clipping."""
  schedule = learning_rate_schedule(config.learning_rate, config.warmup_steps)
  if config.optimizer == "adamw":
    tx = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                     eps=config.adam_eps, weight_decay=config.weight_decay)
  elif config.optimizer == "adafactor":
    tx = optax.adafactor(schedule, weight_decay_rate=config.weight_decay or None)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r}: use 'adamw' or"
                     " 'adafactor'.")
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx
