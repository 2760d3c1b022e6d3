"""Test setup: 8 fake CPU devices, so mesh and sharding tests run anywhere.

XLA reads this flag once, when the backend starts, so it must be set before any test
module imports jax.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk, so tests and the train.py subprocesses they
# start compile an identical step only once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"nmt-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def multi30k_dir() -> pathlib.Path:
  """The raw Multi30k files: $MULTI30K_DIR, else ../shared/data/multi30k."""
  path = pathlib.Path(os.environ.get("MULTI30K_DIR") or REPO.parent / "shared/data/multi30k")
  if not (path / "train.en.gz").exists():
    pytest.skip(f"Multi30k raw files not found in {path}: set MULTI30K_DIR.")
  return path


@pytest.fixture(scope="session")
def smoke_config(multi30k_dir, tmp_path_factory):
  """configs/smoke.py reading Multi30k from the manual dir into a per-session TFDS dir."""
  from configs import smoke  # pylint: disable=import-outside-toplevel
  config = smoke.get_config()
  config.data.manual_dir = str(multi30k_dir)
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config


@pytest.fixture(scope="session")
def prepared(smoke_config, tmp_path_factory):
  """(config, workdir, {split: source}, tokenizer) with Multi30k built and spm trained."""
  from data import prepare  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("workdir")
  sources, tokenizer = prepare.prepare(smoke_config, str(workdir))
  return smoke_config, workdir, sources, tokenizer


@pytest.fixture(scope="session")
def trained_workdir(prepared, tmp_path_factory):
  """A workdir after 4 smoke training steps: checkpoints at steps 2 and 4, BLEU at 4."""
  from training import trainer  # pylint: disable=import-outside-toplevel
  config, tokenizer_dir, _, _ = prepared
  config = config.copy_and_resolve_references()
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 1000  # Evaluates at the last step only,
  config.eval_bleu_sentences = 8  # with BLEU on a few validation sentences.
  workdir = tmp_path_factory.mktemp("trained")
  (workdir / "spm.model").write_bytes((tokenizer_dir / "spm.model").read_bytes())
  trainer.run(config, str(workdir))
  return workdir
