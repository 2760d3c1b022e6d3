"""Config checks run before a training run writes anything, and config differences.

A bad value found after hours of training (a zero `checkpoint_every_steps`, a
final-evaluation split that does not exist) costs the run; found here it costs a
second. Every problem is reported at once, each naming its field and a fix.
"""
from collections.abc import Mapping, Sequence
import json
import math
import numbers
import types

import numpy as np

from models import limits
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


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Problems:
  """Collects 'config.FIELD=value: must be RULE.' lines over a flattened config."""

  def __init__(self, flat: dict):
    self.flat, self.lines, self.named = flat, [], set()

  def need(self, ok, field: str, rule: str) -> None:
    if not ok and field not in self.named:
      self.named.add(field)
      self.lines.append(f"config.{field}={self.flat.get(field)!r}: must be {rule}.")

  def finite(self, *fields: str) -> bool:
    return all(_is_number(self.flat.get(f)) and math.isfinite(self.flat[f])
               for f in fields)

  def number(self, field: str, test, rule: str) -> None:
    """`field` must be a finite number passing `test`."""
    self.need(self.finite(field) and test(self.flat[field]), field, rule)


def _ranges(p: _Problems) -> None:
  """Each field alone: its type and range."""
  flat = p.flat
  for field in flat:
    if field.endswith("_every_steps"):
      p.number(field, lambda v: v > 0, "> 0")
    if field.startswith("model.") and field.endswith("dropout_rate"):
      p.number(field, lambda v: 0 <= v < 1, "in [0, 1) (0: no dropout)")
  for field, rule in {"num_train_steps": ">= 1", "max_checkpoints_to_keep": ">= 1",
                      "average_last_checkpoints": ">= 1 (1: the last checkpoint as it"
                      " is)", "grad_accum_steps": ">= 1", "batch_tokens": ">= 1",
                      "model.num_heads": ">= 1"}.items():
    p.number(field, lambda v: v >= 1, rule)
  for field in ("data.max_length", "data.eval_max_length", "data.vocab_size",
                "model.max_len"):
    p.number(field, lambda v: v > 0, "> 0")
  p.number("warmup_steps", lambda v: v >= 0, ">= 0")
  p.number("learning_rate", lambda v: v > 0, "> 0")
  p.number("grad_clip_norm", lambda v: v >= 0, ">= 0 (0: no clipping)")
  p.number("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
  for field, rule in limits.decode_problems(*(flat.get(f"decode.{f}") for f in (
      "beam_size", "alpha", "max_len_a", "max_len_b"))):
    p.need(False, f"decode.{field}", rule)
  p.need(flat["schedule"] in optimizer.SCHEDULES, "schedule",
         f"one of {optimizer.SCHEDULES}")
  p.need(flat["dropout_rng_impl"] in steps.DROPOUT_RNG_IMPLS, "dropout_rng_impl",
         f"one of {tuple(steps.DROPOUT_RNG_IMPLS)}")
  if "distill.max_train_sentences" in flat:  # distill.py's block, when present.
    p.number("distill.max_train_sentences", lambda v: v == -1 or v >= 1,
             "-1 (all) or >= 1")
    p.number("distill.chunk_sentences", lambda v: v >= 1, ">= 1")
    p.number("distill.batch_tokens", lambda v: v >= 1, ">= 1")
  for field, value in flat.items():  # Any other float: NaN is never stored.
    p.need(not isinstance(value, float) or math.isfinite(value), field,
           "a finite number")


def _relations(p: _Problems) -> None:
  """Fields that must agree with each other (checked when both are numbers)."""
  flat = p.flat
  if p.finite("model.num_heads") and flat["model.num_heads"] >= 1:
    heads = flat["model.num_heads"]
    for field in ("model.emb_dim", "model.qkv_dim"):
      p.number(field, lambda v: v >= 1 and v % heads == 0,
               f"a multiple of model.num_heads={heads} (each head gets an equal"
               " share)")
  if (flat["schedule"] in ("linear", "cosine")
      and p.finite("grad_accum_steps", "warmup_steps", "num_train_steps")
      and flat["grad_accum_steps"] >= 1):
    # The decay needs optimizer updates left after warmup (optimizer.schedule_from_config).
    least = (max(flat["warmup_steps"], 1) + 1) * flat["grad_accum_steps"]
    p.need(flat["num_train_steps"] >= least, "num_train_steps",
           f">= (warmup_steps + 1) x grad_accum_steps = {least}: schedule="
           f"{flat['schedule']!r} decays to 0 after warmup, by the last step")
  for field in ("data.max_length", "data.eval_max_length"):
    if p.finite(field, "model.max_len"):
      p.need(flat[field] <= flat["model.max_len"], field,
             f"<= model.max_len={flat['model.max_len']} (the longest position the"
             " model has; raise model.max_len or shorten the rows)")
  if p.finite("data.max_length", "batch_tokens") and flat["data.max_length"] > 0:
    p.need(flat["batch_tokens"] >= flat["data.max_length"], "batch_tokens",
           f">= data.max_length={flat['data.max_length']} (at least one row)")


def config_problems(config) -> list[str]:
  """Every problem of `config` as 'field=value: what to do', [] if none."""
  problems = _Problems(_flatten(_as_dict(config)))
  _ranges(problems)
  _relations(problems)
  return problems.lines


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
