"""Model bundles (inference/bundle.py): written from a workdir, loaded without it,
translating as the workdir does; int8 stored as int8; damage named; the CLI loads one."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from inference import bundle
from inference.translator import Translator
from models import transformer
from storage import integrity
from tests.conftest import REPO

TEXTS = ["A man rides a bike.", "Two dogs play in the snow near a red house.", ""]


def _ids(translations):
  return [(t.nbest[0].ids, t.nbest[0].score) if t.nbest else () for t in translations]


@pytest.fixture(scope="module")
def bundles(trained_workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp("bundles")
  for weights in ("float32", "int8"):
    bundle.write_bundle(str(trained_workdir), str(root / weights),
                        quantize=None if weights == "float32" else weights)
  return root


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_a_bundle_translates_as_its_workdir_does_without_it(trained_workdir, bundles,
                                                             tmp_path, weights):
  moved = tmp_path / "bundle"  # Nothing of the workdir is reachable from here.
  shutil.copytree(bundles / weights, moved)
  expected = Translator.from_workdir(
      str(trained_workdir), quantize=None if weights == "float32" else weights,
      max_len=16).translate(TEXTS)
  got = Translator.from_bundle(str(moved), max_len=16).translate(TEXTS)
  assert _ids(got) == _ids(expected) and [t.text for t in got] == [
      t.text for t in expected]
  info = bundle.read_info(moved)
  assert info["weights"] == weights and info["step"] == 4
  card = (moved / "MODEL_CARD.md").read_text()
  parameters = transformer.count_params(Translator.from_workdir(
      str(trained_workdir)).params)
  assert f"{parameters:,} parameters" in card and f"{weights} weights" in card
  assert "Trained with: `" in card and "multi30k" in card


def test_int8_weights_are_stored_as_int8(bundles):
  """Every dense kernel and the one shared embedding table are int8, so the int8
  bundle's parameters take at most a third of the float32 ones' bytes."""
  stored = {w: np.load(bundles / w / bundle.PARAMS_FILE) for w in ("float32", "int8")}
  kernels = [n for n in stored["int8"].files if n.endswith("kernel")]
  assert len(kernels) >= 10
  assert all(stored["int8"][n].dtype == np.int8 for n in kernels)
  assert "embed/embedding" not in stored["int8"].files  # No float lookup table.
  nbytes = {w: sum(a[n].nbytes for n in a.files) for w, a in stored.items()}
  assert nbytes["int8"] <= nbytes["float32"] / 3


def test_a_damaged_bundle_is_refused_naming_the_file(bundles, tmp_path):
  damaged = tmp_path / "damaged"
  shutil.copytree(bundles / "float32", damaged)
  data = bytearray((damaged / bundle.PARAMS_FILE).read_bytes())
  data[len(data) // 2] ^= 0xFF
  (damaged / bundle.PARAMS_FILE).write_bytes(bytes(data))
  with pytest.raises(integrity.IntegrityError, match=r"params\.npz"):
    Translator.from_bundle(str(damaged))
  (damaged / integrity.MANIFEST).unlink()
  with pytest.raises(FileNotFoundError, match="not a complete bundle"):
    Translator.from_bundle(str(damaged))


@pytest.mark.slow
def test_infer_translates_with_a_bundle_and_refuses_weight_flags(bundles, tmp_path):
  moved = tmp_path / "int8"
  shutil.copytree(bundles / "int8", moved)
  source = tmp_path / "in.txt"
  source.write_text("\n".join(TEXTS) + "\n")
  run = lambda *flags: subprocess.run(
      [sys.executable, "infer.py", "--mode=translate", f"--workdir={moved}",
       f"--input={source}", f"--output={tmp_path / 'out.txt'}", "--max_source_len=16",
       *flags], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  result = run()
  assert result.returncode == 0, result.stderr
  lines = (tmp_path / "out.txt").read_text().split("\n")
  assert len(lines) == len(TEXTS) + 1 and lines[-1] == ""
  refused = run("--quantize=int8")
  assert refused.returncode != 0 and "drop --quantize" in refused.stderr


@pytest.mark.slow
def test_export_writes_a_bundle_and_prints_what_it_wrote(trained_workdir, tmp_path):
  result = subprocess.run(
      [sys.executable, "export.py", "--format=bundle", f"--workdir={trained_workdir}",
       f"--output={tmp_path / 'b'}", "--quantize=int8"], cwd=REPO, capture_output=True,
      text=True, timeout=300, check=True)
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line["format"] == "bundle" and line["weights"] == "int8" and line["step"] == 4
  assert integrity.verify(tmp_path / "b")
