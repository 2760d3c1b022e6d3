"""Inference flags are checked when parsed, with the allowed range in the message; the
decode settings merged with the run's config.decode are checked before the model
loads. One subprocess per script: the flags are absl's global ones."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Parses each argv with `module`'s flags; prints what each parse said, as JSON lines.
_PARSE = """
import json, sys
from absl import flags
import importlib
module = importlib.import_module(sys.argv[1])
from cli import inference_flags
for argv in json.loads(sys.argv[2]):
  try:
    flags.FLAGS([sys.argv[1] + ".py", *argv])
    if "max_len_a" in flags.FLAGS:
      inference_flags.decode_settings(None)
    print(json.dumps([argv, "ok"]))
  except Exception as e:
    print(json.dumps([argv, f"{type(e).__name__}: {e}"]))
  flags.FLAGS.unparse_flags()
"""


def _parse(module: str, argvs: list[list[str]]) -> dict[str, str]:
  result = subprocess.run([sys.executable, "-c", _PARSE, module, json.dumps(argvs)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return {" ".join(argv): said for argv, said in map(json.loads,
                                                     result.stdout.splitlines())}


def test_bad_inference_flags_are_refused_with_their_range():
  said = _parse("infer", [
      ["--beam_size=1000"], ["--beam_size=0"], ["--alpha=nan"], ["--alpha=-1"],
      ["--max_len_a=-1"], ["--max_len_a=0", "--max_len_b=0"], ["--batch_tokens=0"],
      ["--max_source_len=-1"], ["--nbest=0"], ["--nbest=5", "--beam_size=4"],
      ["--beam_size=16", "--alpha=0", "--max_len_a=0", "--max_len_b=5"]])
  assert "--beam_size=1000" in said["--beam_size=1000"]
  assert "not an integer in the range [1, 16]" in said["--beam_size=1000"]
  assert "not an integer in the range [1, 16]" in said["--beam_size=0"]
  assert "--alpha must be a finite number >= 0" in said["--alpha=nan"]
  assert "not a non-negative number" in said["--alpha=-1"]
  assert "not a non-negative number" in said["--max_len_a=-1"]
  both = said["--max_len_a=0 --max_len_b=0"]
  assert both.startswith(
      "UsageError: --max_len_b=0.0: must be > 0 when max_len_a"), both
  assert "not a positive integer" in said["--batch_tokens=0"]
  assert "not a positive integer" in said["--max_source_len=-1"]
  assert "not a positive integer" in said["--nbest=0"]
  assert "--nbest=5: must be <= the beam size (4)" in said["--nbest=5 --beam_size=4"]
  assert said["--beam_size=16 --alpha=0 --max_len_a=0 --max_len_b=5"] == "ok"


def test_average_last_must_be_at_least_one():
  said = _parse("average", [["--average_last=0"], ["--average_last=1"]])
  assert "--average_last=0" in said["--average_last=0"]
  assert "not a positive integer" in said["--average_last=0"]
  assert said["--average_last=1"] == "ok"


def test_averaging_no_checkpoint_is_refused_by_the_library_too(tmp_path):
  from inference import restore  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"--average_last=0: must be >= 1"):
    restore.average_checkpoints(str(tmp_path), None, 0)
  assert not list(tmp_path.iterdir())
