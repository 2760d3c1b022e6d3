"""The ONNX export (inference/onnx_export.py, runners/onnx.py): the whole beam search
converted by jax2onnx, run by onnxruntime in a process that can import neither the
project nor jax, with our decoder's tokens at beam 1 and 4; its int8 variant.

Skipped without the optional packages (`pip install '.[onnx]'`)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

pytest.importorskip("jax2onnx")
pytest.importorskip("onnxruntime")

# pylint: disable=wrong-import-position
from inference import onnx_export
from inference.translator import Translator
from storage import integrity
from tests.conftest import REPO

TEXTS = ["A man rides a bike.", "", "Two dogs play in the snow near a red house.",
         "  A woman in a hat sings on a stage while a crowd watches.  ", "Hi.",
         "A child."]
SHAPES = ((4, 32),)  # Five sentences: two batches.


def _run_isolated(runner_dir, model, texts) -> list[str]:
  """runners/onnx.py on `texts` with the venv's packages but neither the project
  (-S skips the .pth files, the editable install is one) nor jax (blocked)."""
  env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
         "PYTHONPATH": os.path.dirname(os.path.dirname(jax.__file__))}
  probe = subprocess.run([sys.executable, "-S", "-c", "import inference"],
                         cwd=runner_dir, env=env, capture_output=True, text=True,
                         check=False)
  assert probe.returncode != 0 and "No module named 'inference'" in probe.stderr
  script = ("import runpy, sys; sys.modules['jax'] = None; sys.argv = sys.argv[1:];"
            " runpy.run_path('run.py', run_name='__main__')")
  result = subprocess.run(
      [sys.executable, "-S", "-c", script, "run.py", str(model)], cwd=runner_dir,
      env=env, input="\n".join(texts) + "\n", capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return result.stdout.split("\n")[:-1]


@pytest.mark.slow
def test_onnx_runner_translates_as_we_do_without_the_project(trained_workdir,
                                                             tmp_path):
  isolated = tmp_path / "elsewhere"
  isolated.mkdir()
  shutil.copy(REPO / "runners" / "onnx.py", isolated / "run.py")
  spec = importlib.util.spec_from_file_location("onnx_runner", isolated / "run.py")
  runner = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(runner)
  translator = Translator.from_workdir(str(trained_workdir))
  for beam in (1, 4):
    model = tmp_path / f"beam{beam}"
    info = onnx_export.export_onnx(str(trained_workdir), str(model), beam_size=beam,
                                   shapes=SHAPES)
    manifest = json.loads((model / "onnx" / "manifest.json").read_text())
    assert info["step"] == 4 and manifest["decode"]["beam_size"] == beam
    assert [(p["rows"], p["src_len"]) for p in manifest["programs"]] == [(4, 32)]
    assert integrity.verify(model)  # The programs are in the bundle's manifest.
    expected = translator.translate(TEXTS, beam_size=beam)
    assert _run_isolated(isolated, model, TEXTS) == [t.text for t in expected]
    # Token for token: the program's rows against our ids.
    onnx_model, sources = runner.Model(model), [TEXTS[i] for i in (0, 2, 3, 4)]
    ids = [onnx_model.sp.encode(runner._EDGES.sub("", t)) + [manifest["eos_id"]]
           for t in sources]  # pylint: disable=protected-access
    rows = onnx_model._search(4, 32, ids)  # pylint: disable=protected-access
    for row, text in zip(rows, sources):
      row = [int(t) for t in row]
      row = row[:row.index(manifest["eos_id"])] if manifest["eos_id"] in row else row
      assert tuple(t for t in row if t != manifest["pad_id"]) == (
          translator.translate([text], beam_size=beam)[0].ids)

  # int8: onnxruntime's int8 MatMuls translate every line, in a smaller file.
  int8 = tmp_path / "int8"
  onnx_export.export_onnx(str(trained_workdir), str(int8), quantize="int8",
                          beam_size=4, shapes=SHAPES)
  assert json.loads((int8 / "onnx" / "manifest.json").read_text())["quantize"] == "int8"
  assert ((int8 / "onnx" / "weights.bin").stat().st_size
          < (tmp_path / "beam4" / "onnx" / "weights.bin").stat().st_size)
  out = _run_isolated(isolated, int8, TEXTS)
  assert len(out) == len(TEXTS) and out[1] == "" and all(out[i] for i in (0, 2, 3, 4, 5))
