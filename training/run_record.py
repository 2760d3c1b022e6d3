"""What a workdir records about its run, and the checks a resume must pass first.

`config.json` (the resolved config), `run_info.json` (code and library versions) and
the tokenizer's record in `run.json` are written once the checkpoint found fits the
config; before that, a tokenizer, checkpoint or learning-rate schedule that does not
fit stops the run with nothing written.
"""
import json
import subprocess
import sys

from absl import logging
from etils import epath
import flax
import jax
import optax
import orbax.checkpoint as ocp

from data import tokenizer as tokenizer_lib
from storage import files
from storage import layout
from training import checkpoints
from training import steps
from training import validate


class TokenizerMismatchError(RuntimeError):
  """The tokenizer given to training is not the one the run recorded (run.json)."""


def write_run_info(config, workdir: epath.Path, tokenizer) -> None:
  """config.json (resolved config), run_info.json (git commit, library versions) and
  the tokenizer's record in run.json; called once the checkpoint fits the config."""
  if jax.process_index() != 0:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  layout.write_config(workdir, config)
  tokenizer_lib.bind_to_run(workdir, tokenizer.proto)
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True,
                            cwd=epath.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  info = {"git_commit": commit, "argv": sys.argv, "python": sys.version.split()[0],
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "devices": jax.device_count(),
          "platform": jax.devices()[0].platform, "processes": jax.process_count()}
  files.atomic_write(workdir / "run_info.json", json.dumps(info, indent=2))


def check_tokenizer(workdir: epath.Path, tokenizer) -> None:
  """The tokenizer must be the one the run's checkpoints were trained with."""
  expected = layout.read_run_record(workdir).get("tokenizer")
  found = tokenizer_lib.record(tokenizer.proto)
  if expected and expected != found:
    raise TokenizerMismatchError(
        f"The tokenizer given to training (sha256 {found['sha256']},"
        f" {found['vocab_size']} pieces) is not the one {workdir} was trained with"
        f" (sha256 {expected['sha256']}, {expected['vocab_size']} pieces, recorded"
        f" in {workdir / layout.RUN_FILE}). Use that run's spm.model, or a new"
        " --workdir.")


def _saved_config(workdir: epath.Path) -> tuple[epath.Path, str | None]:
  """The run's config.json path and its text (None before the first run)."""
  path = workdir / layout.CONFIG_FILE
  return path, path.read_text() if path.exists() else None


def restore_or_stop(config, workdir: epath.Path,
                    checkpointer: checkpoints.Checkpointer,
                    abstract: steps.TrainState, train_iter
                    ) -> tuple[steps.TrainState | None, int]:
  """`Checkpointer.restore_latest` onto `abstract`, then `check_resumed_config`; a
  mismatch also names the config fields changed."""
  try:
    restored, start_step = checkpointer.restore_latest(abstract, train_iter)
  except checkpoints.CheckpointMismatchError as e:
    saved_path, saved = _saved_config(workdir)
    diff = validate.config_diff(json.loads(saved), config) if saved else []
    raise checkpoints.CheckpointMismatchError(
        f"{e}\nConfig fields that differ from {saved_path} (which is unchanged):\n  "
        + ("\n  ".join(diff) or "none (the code changed the state?)")) from None
  if restored is not None:
    check_resumed_config(config, workdir, start_step)
  return restored, start_step


def check_resumed_config(config, workdir: epath.Path, start_step: int) -> list[str]:
  """On resume, the config fields that differ from the run's config.json.

  A change to the learning rate of the steps still to train stops the run before
  anything is written. Other changes (more steps of rsqrt, evaluation settings) go
  on: they are logged, and the config.json they replace is kept as
  config.step<start_step>.json.
  """
  saved_path, saved_text = _saved_config(workdir)
  if saved_text is None:
    return []
  saved = json.loads(saved_text)
  changes = validate.config_diff(saved, config)
  if not changes:
    return []
  listed = "\n  ".join(changes)
  moved = validate.schedule_change(saved, config, start_step)
  if moved:
    raise validate.ScheduleChangeError(
        f"Resuming {workdir} at step {start_step} with this config would change the"
        f" learning rate of the steps still to train ({moved}). Config fields that"
        f" differ from {saved_path} (which is unchanged):\n  {listed}\nRestore them"
        " to continue this run, or train in a new --workdir: a linear or cosine"
        " schedule ends at its num_train_steps and cannot be extended.")
  kept = workdir / layout.REPLACED_CONFIG_FILE.format(step=start_step)
  if jax.process_index() == 0:
    files.atomic_write(kept, saved_text)
  logging.warning("Resuming at step %d with a changed config (the old one is kept as"
                  " %s):\n  %s", start_step, kept, listed)
  return changes
