"""The training loop's settings: typed fields read once from the run's config.

As `TransformerConfig.from_config` (the model) and `DecodeSettings.from_config` (beam
search) do for their blocks, `TrainSettings.from_config` takes what the loop and the
train step read, so `Trainer` never looks into the whole ConfigDict. The optimizer and
its schedule read their own fields (`training.optimizer`), and the inputs read
`config.data` (`training.inputs`).
"""
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """How long to train, how often to log, evaluate and save, and the step's knobs."""
  num_train_steps: int  # The last step; a resumed run continues up to it.
  log_every_steps: int  # Train metrics to TensorBoard, metrics.jsonl, the progress bar.
  eval_every_steps: int  # Validation loss, accuracy, perplexity (and evaluators').
  checkpoint_every_steps: int  # The last step and a stop request save too.
  max_checkpoints_to_keep: int  # Plus the best by validation BLEU.
  seed: int  # With the step, it makes the dropout keys (exact resume).
  label_smoothing: float
  dropout_rng_impl: str  # A key of `steps.DROPOUT_RNG_IMPLS`.
  profile_start_step: int = -1  # A jax.profiler trace starts here (-1: off)...
  profile_num_steps: int = 5  # ...and covers this many steps (WORKDIR/profile).

  @classmethod
  def from_config(cls, config: Any) -> "TrainSettings":
    """From the run's top-level config (ConfigDict or anything with these fields)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

  @property
  def profile_steps(self) -> tuple[int, int] | None:
    """(first, last) step of the profiler trace, or None when profiling is off."""
    if self.profile_start_step <= 0:
      return None
    return (self.profile_start_step,
            self.profile_start_step + self.profile_num_steps - 1)
