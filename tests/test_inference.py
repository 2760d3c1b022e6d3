"""Inference: params-only restore, checkpoint averaging, infer.py on awkward input,
n-best evaluation and decode defaults from the run's config."""
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data import datasets
from inference import decoder as decoder_lib
from inference import bleu
from inference import evaluate
from inference import bucketing
from inference import restore
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from storage import layout
from tests.conftest import REPO


def _partitioner() -> Partitioner:
  return Partitioner(mesh_lib.create_mesh((-1, 1, 1)))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_params_only_restore_needs_no_optimizer_state(trained_workdir, tmp_path):
  mesh = _partitioner()
  expected = restore.restore_params(str(trained_workdir), mesh).params
  workdir = tmp_path / "copy"
  shutil.copytree(trained_workdir, workdir)
  for step in (2, 4):  # Without the optimizer (and data) state, inference still works.
    shutil.rmtree(workdir / "checkpoints" / str(step) / "optimizer")
    shutil.rmtree(workdir / "checkpoints" / str(step) / "data")
  restored = restore.restore_params(str(workdir), mesh)
  assert restored.step == 4
  for a, b in zip(_leaves(restored.params), _leaves(expected)):
    np.testing.assert_array_equal(a, b)
  bf16 = restore.restore_params(str(workdir), mesh, dtype="bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(bf16.params)} == {"bfloat16"}


@pytest.mark.slow
def test_averaging_two_checkpoints_is_the_elementwise_mean(trained_workdir, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(trained_workdir, workdir)
  mesh = _partitioner()
  step2, step4 = (restore.restore_params(str(workdir), mesh, step=s).params
                  for s in (2, 4))
  output = restore.average_checkpoints(str(workdir), mesh, last_n=2)
  averaged = restore.restore_params(str(workdir), mesh, checkpoint_dir=str(output))
  assert averaged.step == 4
  for avg, a, b in zip(_leaves(averaged.params), _leaves(step2), _leaves(step4)):
    np.testing.assert_allclose(avg, (a + b) / 2, rtol=1e-6, atol=1e-7)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(step2), _leaves(step4)))


@pytest.mark.slow
def test_recipe_end_averages_what_there_is_and_scores_again(trained_workdir, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(trained_workdir, workdir)
  for _ in range(2):  # A rerun rewrites the averaged checkpoint and the scores.
    [result] = evaluate.evaluate_run(
        str(workdir), _partitioner(), splits=["validation"], average_last=3,
        settings=decoder_lib.DecodeSettings(beam_size=1))
  assert result["averaged_checkpoints"] == 2  # Only checkpoints 2 and 4 exist.
  assert json.loads((workdir / "results.json").read_text()) == [result]
  hypotheses = pathlib.Path(result["hypotheses"]).read_text().split("\n")
  assert len(hypotheses) - 1 == result["sentences"] == 1014
  assert layout.checkpoint_steps(workdir / "averaged_last2") == [4]


def test_missing_checkpoint_names_the_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*train.py"):
    restore.restore_params(str(tmp_path), _partitioner())


def _infer(*args, stdin=None):
  return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=REPO,
                        input=stdin, capture_output=True, timeout=600)


def _evaluate(*args) -> dict:
  """Runs `infer.py --mode=evaluate` and returns the JSON line it prints."""
  result = _infer("--mode=evaluate", *args)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  return json.loads(result.stdout.decode().strip().splitlines()[-1])


def _validation_files(prepared, directory, count=50):
  """The first `count` validation pairs as --input and --reference files."""
  config, _, sources, _ = prepared
  directory.mkdir(exist_ok=True)
  paths = directory / "val.en", directory / "val.fr"
  for path, texts in zip(paths, datasets.text_pairs(
      sources["validation"], config.data.source_lang, config.data.target_lang,
      limit=count)):
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
  return paths


@pytest.mark.slow
def test_translate_gives_one_line_per_input_line(trained_workdir, tmp_path):
  lines = [b"A man rides a bike.", b"", b"   \t ", b"x " * 2500,
           b"Un caf\xe9 au lait", "Un chien 🐕 court.".encode(), b"Two dogs."]
  source = tmp_path / "input.en"
  source.write_bytes(b"\n".join(lines) + b"\n")
  output = tmp_path / "output.fr"
  result = _infer("--mode=translate", f"--workdir={trained_workdir}",
                  f"--input={source}", f"--output={output}", "--beam_size=2")
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  out = output.read_text(encoding="utf-8").split("\n")
  assert out[-1] == "" and len(out) - 1 == len(lines)
  assert out[1] == "" and out[2] == ""
  stderr = result.stderr.decode()
  assert f"{source}:4:" in stderr and "tokens" in stderr  # Truncated, not dropped.
  assert f"{source}:5: invalid UTF-8" in stderr

  nbest = _infer("--mode=translate", f"--workdir={trained_workdir}", "--nbest=2",
                 "--beam_size=2", stdin=b"A dog.\n\nA cat.")
  assert nbest.returncode == 0, nbest.stderr.decode()[-3000:]
  rows = nbest.stdout.decode().split("\n")
  assert len(rows) == 4 and rows[1] == "" and len(rows[0].split("\t")) == 4


@pytest.mark.slow
def test_translate_without_checkpoint_says_how_to_train(trained_workdir, tmp_path):
  shutil.copy(trained_workdir / "config.json", tmp_path)
  result = _infer("--mode=translate", f"--workdir={tmp_path}", stdin=b"A dog.\n")
  assert result.returncode != 0
  stderr = result.stderr.decode()
  assert f"No checkpoint in {tmp_path}/checkpoints" in stderr and "train.py" in stderr


@pytest.mark.slow
def test_evaluate_prints_both_bleu_conventions(trained_workdir):
  result = _infer("--mode=evaluate", f"--workdir={trained_workdir}",
                  "--split=validation", "--beam_size=1")
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  scores = json.loads(result.stdout.decode().strip().splitlines()[-1])
  assert {"bleu_lc_tok", "sacrebleu", "sacrebleu_signature", "chrf"} <= set(scores)
  hypotheses = pathlib.Path(scores["hypotheses"]).read_text().split("\n")
  assert len(hypotheses) - 1 == 1014 == scores["sentences"]


@pytest.mark.slow
def test_evaluate_with_nbest_scores_the_best_hypothesis(trained_workdir, prepared,
                                                       tmp_path):
  """Regression: --nbest=2 used to score the `hyp<TAB>score<TAB>hyp...` lines."""
  source, reference = _validation_files(prepared, tmp_path)
  scores, lines = {}, {}
  for nbest in (1, 2):
    output = tmp_path / f"nbest{nbest}.txt"
    scores[nbest] = _evaluate(f"--workdir={trained_workdir}", f"--input={source}",
                              f"--reference={reference}", f"--output={output}",
                              "--beam_size=2", f"--nbest={nbest}")
    assert scores[nbest]["hypotheses"] == str(output)
    lines[nbest] = output.read_text(encoding="utf-8").split("\n")[:-1]
  assert len(lines[1]) == len(lines[2]) == scores[1]["sentences"] == 50
  assert all(len(line.split("\t")) == 4 for line in lines[2])
  assert not any("\t" in line for line in lines[1])
  assert [line.split("\t")[0] for line in lines[2]] == lines[1]
  for key in ("bleu_lc_tok", "sacrebleu", "chrf", "sentences"):
    assert scores[2][key] == scores[1][key], key


@pytest.mark.slow
def test_evaluate_takes_decode_defaults_from_the_run(trained_workdir, prepared,
                                                     tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  # Unlike infer.py's own flag defaults (beam 4, alpha 0.6, max_len_b 10).
  config["decode"].update(beam_size=1, alpha=0.3, max_len_b=7.0)
  (workdir / "config.json").write_text(json.dumps(config))
  source, reference = _validation_files(prepared, tmp_path / "data", count=8)
  args = (f"--workdir={workdir}", f"--input={source}", f"--reference={reference}",
          f"--output={tmp_path / 'hyp.txt'}")
  saved = _evaluate(*args)
  assert (saved["beam_size"], saved["alpha"], saved["max_len_b"]) == (1, 0.3, 7.0)
  flag = _evaluate(*args, "--beam_size=2")  # The flag given overrides that field only.
  assert (flag["beam_size"], flag["alpha"], flag["max_len_b"]) == (2, 0.3, 7.0)


def test_shared_task_bleu_is_lowercased_and_tokenized():
  perfect = bleu.score(["Un homme, à vélo."], ["un homme , à vélo ."])
  assert perfect["bleu_lc_tok"] == 100.0 and perfect["sacrebleu"] < 100.0


def test_batches_keep_every_line_and_few_shapes():
  sources = [bucketing.Source(i + 1, [5] * (1 + i % 40)) for i in range(300)]
  sources.append(bucketing.Source(301, []))
  seen, shapes = [], set()
  for batch, inputs in bucketing.batches(sources, batch_tokens=256):
    assert inputs.shape[0] * inputs.shape[1] <= 256 or inputs.shape[0] == 1
    shapes.add(inputs.shape)
    for row, source in enumerate(batch):
      assert (inputs[row] != 0).sum() == len(source.ids)
    seen += [s.line for s in batch]
  assert sorted(seen) == list(range(1, 301))
  assert len(shapes) <= 12
