"""Test setup: 8 fake CPU devices, so mesh and sharding tests run anywhere.

XLA reads this flag once, when the backend starts, so it must be set before any test
module imports jax.
"""
import os

# jax-free: it must not import jax before the variables below are set.
from inference import compile_cache

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CTranslate2's int8 GEMM without MKL (its default on non-Intel CPUs) loses accuracy
# on AVX2 processors without VNNI (0.97 nats off our log-probabilities instead of
# 0.05 on a tiny model): its u8 x s8 multiply-add saturates. MKL's int8 GEMM does
# not. Read when ctranslate2 loads; tests/test_export.py compares int8 numerically.
os.environ.setdefault("CT2_USE_MKL", "1")


# Compiled programs are cached on disk in a private per-user directory, so tests and
# the train.py/infer.py subprocesses they start (they inherit the environment)
# compile an identical step only once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = compile_cache.private_dir(compile_cache.default_dir("jax-tests"))
  if _CACHE_DIR is not None:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The project's modules come after the flags above: jax reads them on first import.
import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from data import pipeline  # pylint: disable=wrong-import-position
from parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from parallel.sharding import Partitioner  # pylint: disable=wrong-import-position
from recipes import prepare  # pylint: disable=wrong-import-position
from recipes import train_and_score  # pylint: disable=wrong-import-position
from training import state as state_lib  # pylint: disable=wrong-import-position
from training import trainer  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


class Run:
  """A smoke-config model, its optimizer and its jitted steps on one mesh."""

  def __init__(self, prepared, mesh_shape, devices=None, **overrides):
    config, _, _, tokenizer = prepared
    self.config = config = config.copy_and_resolve_references()
    config.update_from_flattened_dict(overrides)
    self.partitioner = Partitioner(mesh_lib.create_mesh(mesh_shape, devices),
                                   config.logical_axis_rules)
    self.program = state_lib.build_program(config, tokenizer.vocab_size,
                                           self.partitioner)
    self.state = self.program.init()
    self.train_step, self.eval_step = self.program.train_step, self.program.eval_step

  def train(self, batches) -> list[float]:
    losses = []
    for batch in batches:
      self.state, metrics = self.train_step(
          self.state, pipeline.make_global(batch, self.partitioner.batch_sharding()))
      losses.append(float(metrics["loss"]))
    return losses


def train_in(config, workdir, prepared) -> dict:
  """The recipe's wiring in-process: `trainer.run` with the session's data and BLEU."""
  _, _, sources, tokenizer = prepared
  partitioner = Partitioner.from_config(config)
  return trainer.run(config, str(workdir), partitioner, sources, tokenizer,
                     evaluators=train_and_score.validation_bleu(
                         config, sources["validation"], tokenizer, partitioner))


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
  config = smoke.get_config()
  config.data.manual_dir = str(multi30k_dir)
  config.data.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config


@pytest.fixture(scope="session")
def prepared(smoke_config, tmp_path_factory):
  """(config, workdir, {split: source}, tokenizer) with Multi30k built and spm trained."""
  workdir = tmp_path_factory.mktemp("workdir")
  sources, tokenizer = prepare.prepare(smoke_config, str(workdir))
  return smoke_config, workdir, sources, tokenizer


def train_smoke(prepared, workdir: pathlib.Path, **overrides) -> pathlib.Path:
  """Trains the session's smoke config, with `overrides` of its top-level fields, in
  `workdir` (which gets the session's spm.model); returns `workdir`."""
  config, tokenizer_dir, _, _ = prepared
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    setattr(config, field, value)
  (workdir / "spm.model").write_bytes((tokenizer_dir / "spm.model").read_bytes())
  train_in(config, workdir, prepared)
  return workdir


@pytest.fixture(scope="session")
def trained_workdir(prepared, tmp_path_factory):
  """A workdir after 4 smoke training steps: checkpoints at steps 2 and 4, BLEU at 4."""
  return train_smoke(
      prepared, tmp_path_factory.mktemp("trained"), num_train_steps=4,
      checkpoint_every_steps=2,
      eval_every_steps=1000,  # Evaluates at the last step only,
      eval_bleu_sentences=8)  # with BLEU on a few validation sentences.


class _NoEvents:
  """Stands in for tensorboardX's SummaryWriter: no event files (a bucket has none)."""

  def __init__(self, logdir):
    del logdir

  def add_scalar(self, *args):
    pass

  def close(self):
    pass


@pytest.fixture
def no_event_files(monkeypatch):
  """MetricWriter writes metrics.jsonl only: tests of that file need no TensorBoard."""
  from training import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(metrics_lib, "SummaryWriter", _NoEvents)
