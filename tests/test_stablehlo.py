"""The StableHLO decoder (inference/stablehlo.py, runners/stablehlo.py): exported for
CPU, CUDA and TPU in one file, run by a runner that cannot import the project, with
our decoder's translations."""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from inference import stablehlo
from inference.translator import Translator
from storage import integrity
from tests.conftest import REPO

TEXTS = ["A man rides a bike.", "", "Two dogs play in the snow near a red house.",
         "  A woman in a hat sings on a stage while a crowd watches.  ", "Hi.",
         "A child."]


@pytest.mark.slow
def test_the_runner_translates_as_we_do_without_the_project(trained_workdir,
                                                            tmp_path):
  model = tmp_path / "model"
  info = stablehlo.export_stablehlo(str(trained_workdir), str(model),
                                    shapes=((1, 16), (4, 16), (4, 32)))
  manifest = json.loads((model / "stablehlo" / "manifest.json").read_text())
  assert manifest["platforms"] == ["cpu", "cuda", "tpu"] and info["step"] == 4
  assert [(p["rows"], p["src_len"]) for p in manifest["programs"]] == [
      (1, 16), (4, 16), (4, 32)]
  assert integrity.verify(model)  # The programs are in the bundle's manifest.

  # The venv's packages without the project: -S skips the .pth files (the editable
  # install is one), PYTHONPATH names site-packages, another folder is the cwd.
  isolated = tmp_path / "elsewhere"
  isolated.mkdir()
  shutil.copy(REPO / "runners" / "stablehlo.py", isolated / "run.py")
  env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
         "PYTHONPATH": os.path.dirname(os.path.dirname(jax.__file__))}
  probe = subprocess.run([sys.executable, "-S", "-c", "import inference"],
                         cwd=isolated, env=env, capture_output=True, text=True,
                         check=False)
  assert probe.returncode != 0 and "No module named 'inference'" in probe.stderr
  result = subprocess.run(
      [sys.executable, "-S", "run.py", str(model)], cwd=isolated, env=env,
      input="\n".join(TEXTS) + "\n", capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr
  expected = Translator.from_workdir(str(trained_workdir)).translate(TEXTS)
  assert result.stdout.split("\n")[:-1] == [t.text for t in expected]
  assert result.stdout.split("\n")[1] == ""  # The empty line stays empty.
