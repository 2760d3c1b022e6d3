"""Kill -9 at any point keeps the previous good output: averages and CTranslate2
exports are built beside the old one and swapped in whole, so a writer killed at a
random moment leaves the old output or the new one, complete and verifiable.

The fault-injection tests run the real writers (`layout.save_params`, which
average.py uses, and `export.export_ctranslate2`) in a loop in a subprocess and
SIGKILL it after a random delay, a few times each.
"""
import errno
import os
import random
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.tokenizer import PAD_ID
from models import transformer
from storage import files
from storage import integrity
from storage import layout
from tests.conftest import REPO

ctranslate2 = pytest.importorskip("ctranslate2")
from inference import export  # pylint: disable=wrong-import-position

KILLS = 3  # Per writer.


def _tiny_model(vocab: int = 64, seed: int = 0) -> transformer.Transformer:
  cfg = transformer.TransformerConfig(
      vocab_size=vocab, pad_id=PAD_ID, emb_dim=32, num_heads=4, num_encoder_layers=1,
      num_decoder_layers=1, qkv_dim=32, mlp_dim=64, max_len=64)
  return transformer.Transformer(cfg, rngs=nnx.Rngs(seed))


def _export(directory, seed: int = 0, vocab=None):
  model = _tiny_model(seed=seed)
  export.export_ctranslate2(model, None, model.cfg,
                            vocab or export.synthetic_vocabulary(64), directory)


def test_a_reexport_replaces_the_old_directory_whole(tmp_path):
  directory = tmp_path / "ct2"
  _export(directory)
  (directory / "stale.txt").write_text("from an older export")
  _export(directory, seed=1)
  assert "stale.txt" not in os.listdir(directory)
  assert integrity.verify(directory)
  ctranslate2.Translator(str(directory), device="cpu")
  assert sorted(os.listdir(tmp_path)) == ["ct2"]  # No staging directory left.


def test_an_export_never_replaces_a_directory_it_did_not_write(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="holds other files and no export"):
    _export(tmp_path)
  with pytest.raises(ValueError, match="is a file"):
    _export(tmp_path / "notes.txt")
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_the_export_holds_the_tokenizer(prepared, tmp_path):
  tokenizer = prepared[3]
  model = _tiny_model(vocab=tokenizer.vocab_size)
  export.export_ctranslate2(model, None, model.cfg, tokenizer, tmp_path / "ct2")
  assert (tmp_path / "ct2" / "spm.model").read_bytes() == tokenizer.proto
  assert "spm.model" in integrity.read_manifest(tmp_path / "ct2")


def test_an_average_replaces_the_old_one_whole(tmp_path):
  directory = tmp_path / "averaged_last2"
  layout.save_params(directory, 4, {"w": jnp.full(8, 4.0)})
  layout.save_params(directory, 6, {"w": jnp.full(8, 6.0)})
  assert layout.checkpoint_steps(directory) == [6]
  assert layout.verify_step(directory, 6)
  assert sorted(os.listdir(tmp_path)) == ["averaged_last2"]


def test_a_writer_killed_between_the_renames_is_recovered(tmp_path, monkeypatch):
  directory = tmp_path / "averaged_last2"
  layout.save_params(directory, 4, {"w": jnp.full(8, 4.0)})
  monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # No RENAME_EXCHANGE.
  rename = os.rename

  def killed_after_the_first(src, dst):
    rename(src, dst)
    if dst.endswith(".old"):
      raise KeyboardInterrupt  # Stands in for the kill.
  monkeypatch.setattr(os, "rename", killed_after_the_first)
  with pytest.raises(KeyboardInterrupt):
    layout.save_params(directory, 6, {"w": jnp.full(8, 6.0)})
  monkeypatch.setattr(os, "rename", rename)
  assert not directory.exists()
  files.recover_dir(directory)  # What the next writer does first.
  assert layout.checkpoint_steps(directory) == [4]
  layout.save_params(directory, 6, {"w": jnp.full(8, 6.0)})
  assert layout.checkpoint_steps(directory) == [6]
  assert not (tmp_path / ".averaged_last2.old").exists()


# Writes the output again and again, alternating contents; prints "ready" once the
# first write is done. Run as a subprocess and killed at a random moment.
_WRITER = """
import sys
import jax.numpy as jnp
sys.path.insert(0, sys.argv[3])
from tests import test_kill9 as t
from storage import layout
target, kind = sys.argv[1], sys.argv[2]
for i in range(10**6):
  if kind == "average":
    layout.save_params(target, 2 + i % 2, {"w": jnp.full(4096, 2.0 + i % 2)})
  else:
    t._export(target, seed=i % 2)
  if i == 0:
    print("ready", flush=True)
"""


def _kill_at_random(target, kind: str, rng: random.Random) -> None:
  process = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), kind,
                              str(REPO)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
  try:
    assert process.stdout.readline() == b"ready\n"
    time.sleep(rng.uniform(0.0, 1.5))
  finally:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("kind", ["average", "export"])
def test_a_writer_killed_at_a_random_moment_leaves_a_complete_output(tmp_path, kind):
  rng = random.Random(kind)
  target = tmp_path / "out"
  for _ in range(KILLS):
    _kill_at_random(target, kind, rng)
    if kind == "average":
      (step,) = layout.checkpoint_steps(target)  # The old average or the new one.
      assert layout.verify_step(target, step)
      params = layout.restore_params(target, step,
                                     {"w": jax.ShapeDtypeStruct((4096,), jnp.float32)})
      np.testing.assert_array_equal(params["w"], np.full(4096, float(step)))
    else:
      assert integrity.verify(target)
      ctranslate2.Translator(str(target), device="cpu")
  # The next write deletes what the killed ones left beside the output.
  if kind == "average":
    layout.save_params(target, 2, {"w": jnp.full(4096, 2.0)})
  else:
    _export(target)
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_full_disk_during_an_export_keeps_the_old_one(tmp_path, monkeypatch):
  directory = tmp_path / "ct2"
  _export(directory)
  before = integrity.read_manifest(directory)

  def full_disk(self, path):
    raise OSError(errno.ENOSPC, "No space left on device", path)
  monkeypatch.setattr(ctranslate2.specs.TransformerSpec, "save", full_disk)
  with pytest.raises(OSError, match="No space left"):
    _export(directory, seed=1)
  assert integrity.read_manifest(directory) == before and integrity.verify(directory)
  assert sorted(os.listdir(tmp_path)) == ["ct2"]
