"""Config checks run before a training run writes anything, and config differences.

A bad value found after hours of training (a zero `checkpoint_every_steps`, a
final-evaluation split that does not exist) costs the run; found here it costs a
second. Every problem is reported at once, each naming its field and a fix.
"""
from collections.abc import Mapping, Sequence
import json
import types

import numpy as np

from training import optimizer
from training import steps


class ConfigError(ValueError):
  """The config cannot train; the message lists every bad field."""


class ScheduleChangeError(ValueError):
  """A resume whose config would change the learning rate of the steps still to train."""


def _flatten(tree: Mapping, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def config_problems(config) -> list[str]:
  """Every problem of `config` as 'field=value: what to do', [] if none."""
  flat = _flatten(_as_dict(config))
  problems = []

  def need(ok: bool, field: str, rule: str):
    if not ok:
      problems.append(f"config.{field}={flat.get(field)!r}: must be {rule}.")

  for field, value in flat.items():
    if field.endswith("_every_steps"):
      need(value > 0, field, "> 0")
  need(flat["num_train_steps"] >= 1, "num_train_steps", ">= 1")
  need(flat["max_checkpoints_to_keep"] >= 1, "max_checkpoints_to_keep", ">= 1")
  need(flat["average_last_checkpoints"] >= 1, "average_last_checkpoints",
       ">= 1 (1: the last checkpoint as it is)")
  need(flat["grad_accum_steps"] >= 1, "grad_accum_steps", ">= 1")
  need(flat["batch_tokens"] > 0, "batch_tokens", "> 0")
  need(flat["warmup_steps"] >= 0, "warmup_steps", ">= 0")
  need(flat["schedule"] in optimizer.SCHEDULES, "schedule",
       f"one of {optimizer.SCHEDULES}")
  if flat["schedule"] in ("linear", "cosine") and flat["grad_accum_steps"] >= 1:
    # The decay needs optimizer updates left after warmup (optimizer.schedule_from_config).
    least = (max(flat["warmup_steps"], 1) + 1) * flat["grad_accum_steps"]
    need(flat["num_train_steps"] >= least, "num_train_steps",
         f">= (warmup_steps + 1) x grad_accum_steps = {least}: schedule="
         f"{flat['schedule']!r} decays to 0 after warmup, by the last step")
  need(flat["dropout_rng_impl"] in steps.DROPOUT_RNG_IMPLS, "dropout_rng_impl",
       f"one of {tuple(steps.DROPOUT_RNG_IMPLS)}")
  need(flat["decode.beam_size"] >= 1, "decode.beam_size", ">= 1 (1: greedy)")
  for field in ("data.max_length", "data.eval_max_length", "data.vocab_size",
                "model.max_len"):
    need(flat[field] > 0, field, "> 0")
  for field in ("data.max_length", "data.eval_max_length"):
    need(flat[field] <= flat["model.max_len"], field,
         f"<= model.max_len={flat['model.max_len']} (the longest position the"
         " model has; raise model.max_len or shorten the rows)")
  if flat["data.max_length"] > 0:
    need(flat["batch_tokens"] >= flat["data.max_length"], "batch_tokens",
         f">= data.max_length={flat['data.max_length']} (at least one row)")
  if "distill.max_train_sentences" in flat:  # distill.py's block, when present.
    need(flat["distill.max_train_sentences"] == -1
         or flat["distill.max_train_sentences"] >= 1, "distill.max_train_sentences",
         "-1 (all) or >= 1")
    need(flat["distill.chunk_sentences"] >= 1, "distill.chunk_sentences", ">= 1")
    need(flat["distill.batch_tokens"] > 0, "distill.batch_tokens", "> 0")
  return problems


def validate_config(config) -> None:
  """Raises ConfigError listing every problem of `config` (see `config_problems`)."""
  problems = config_problems(config)
  if problems:
    raise ConfigError("The config cannot train; fix these fields (e.g."
                      " --config.FIELD=VALUE):\n  " + "\n  ".join(problems))


def validate_splits(config, available: Sequence[str]) -> None:
  """`final_eval_splits` must all exist in the prepared dataset (`available`)."""
  missing = [s for s in config.final_eval_splits if s not in available]
  if missing:
    raise ConfigError(
        f"config.final_eval_splits={tuple(config.final_eval_splits)!r}: {missing} not"
        f" in {config.data.dataset} (it has {sorted(available)}). Name existing"
        " splits, or add their raw files to data.manual_dir.")


def config_diff(saved: Mapping, new) -> list[str]:
  """Fields that differ between a saved config (config.json) and `new`, as text."""
  # As JSON both, so a tuple and the list config.json holds for it compare equal.
  saved, new = (json.loads(json.dumps(_as_dict(c), default=str)) for c in (saved, new))
  old, now = _flatten(saved), _flatten(new)
  return [f"{k}: {old.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
          for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]


def schedule_change(saved: Mapping, new, start_step: int) -> str | None:
  """The first step still to train whose learning rate `new` changes, as text; None
  when resuming `saved`'s run at `start_step` keeps every remaining rate.

  rsqrt has no end point, so more steps continue it; a linear or cosine decay ends
  at its num_train_steps, so any other end moves the rates from here on.
  """
  # A field older config.json files lack counts as unchanged.
  saved = types.SimpleNamespace(**{f: _as_dict(saved).get(f, new[f]) for f in (
      "learning_rate", "warmup_steps", "schedule", "num_train_steps",
      "grad_accum_steps")})
  accum = max(new.grad_accum_steps, 1)
  counts = np.arange(start_step // accum, new.num_train_steps // accum)  # Updates.
  if not counts.size:
    return None
  before = np.asarray(optimizer.schedule_from_config(saved)(counts))
  after = np.asarray(optimizer.schedule_from_config(new)(counts))
  moved = np.flatnonzero(~np.isclose(before, after, rtol=1e-6, atol=0))
  if not moved.size:
    return None
  i = moved[0]
  return (f"step {(counts[i] + 1) * accum}: learning rate {before[i]:.6g} in the run,"
          f" {after[i]:.6g} with this config")
