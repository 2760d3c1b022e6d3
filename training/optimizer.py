"""The optimizer: AdamW (or Adafactor), a warmup-then-decay learning rate, clipping."""
import jax.numpy as jnp
import optax

# Decays after the linear warmup: 'rsqrt' has no end point (a finished run can be
# continued with the same schedule); 'linear' and 'cosine' reach zero at the last step,
# for a fixed budget.
SCHEDULES = ("rsqrt", "linear", "cosine")


def learning_rate_schedule(learning_rate: float, warmup_steps: int,
                           schedule: str = "rsqrt",
                           total_steps: int | None = None) -> optax.Schedule:
  """The learning rate at each optimizer update count (0-based, as optax counts).

  All three warm up linearly, as `learning_rate * (count + 1) / warmup_steps`, so the
  first update is not spent at rate 0, and reach `learning_rate` at count
  `warmup_steps - 1`. Then:
    'rsqrt':  learning_rate * sqrt(warmup_steps / (count + 1)) (Vaswani et al.);
    'linear': straight down to 0 at count `total_steps`;
    'cosine': half a cosine down to 0 at count `total_steps`.
  'linear' and 'cosine' need `total_steps` > `warmup_steps`; after `total_steps` they
  stay at 0, so a run continued past its schedule does not move.
  """
  warmup_steps = max(warmup_steps, 1)
  if schedule == "rsqrt":
    def rsqrt(count):
      count = jnp.maximum(count + 1, 1).astype(jnp.float32)
      return learning_rate * jnp.minimum(count / warmup_steps,
                                         jnp.sqrt(warmup_steps / count))
    return rsqrt
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULES}.")
  if total_steps is None or total_steps <= warmup_steps:
    raise ValueError(f"schedule={schedule!r} decays to 0 at total_steps, which must"
                     f" exceed warmup_steps={warmup_steps}; got {total_steps}.")
  warmup = optax.linear_schedule(learning_rate / warmup_steps, learning_rate,
                                 warmup_steps - 1)
  decay_steps = total_steps - warmup_steps
  if schedule == "linear":
    decay = optax.linear_schedule(learning_rate, 0.0, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=0.0)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def schedule_from_config(config) -> optax.Schedule:
  """`config.schedule` over the run's optimizer updates.

  With gradient accumulation an update takes `grad_accum_steps` train steps, so the
  decay ends after `num_train_steps // grad_accum_steps` updates, at the last step.
  """
  return learning_rate_schedule(
      config.learning_rate, config.warmup_steps, config.schedule,
      config.num_train_steps // max(config.grad_accum_steps, 1))


def create_optimizer(config) -> optax.GradientTransformation:
  """The update rule named by `config.optimizer`, with global-norm gradient clipping."""
  schedule = schedule_from_config(config)
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
