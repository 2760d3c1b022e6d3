"""Sequence-level distillation (distill.py): the teacher's translation file, its reuse
and resume, the student's training data, and the whole pipeline on a tiny model."""
import json
import shutil

import pytest

from configs import multi30k_distill
from data import datasets
from data import distilled
from inference import evaluate
from inference.translator import Translator
from recipes import distillation
from recipes import train_and_score
from storage import integrity
from storage import layout
from training import validate

SENTENCES = 16  # Training sentences the tiny teacher translates (of 29,000).
CHUNK = 8  # So the file is written in two chunks (of one compiled set of shapes).
SCORED = 16  # Pairs of each split the final scoring reads here (all in a real run).


def test_distill_config_is_valid_and_its_bad_fields_are_named():
  config = multi30k_distill.get_config()
  validate.validate_config(config)
  assert (config.model.num_encoder_layers, config.model.num_decoder_layers) == (6, 1)
  assert config.distill.max_train_sentences == -1  # The whole training split.
  config.distill.max_train_sentences = 0
  config.distill.chunk_sentences = 0
  assert validate.config_problems(config) == [
      "config.distill.max_train_sentences=0: must be -1 (all) or >= 1.",
      "config.distill.chunk_sentences=0: must be >= 1."]


def test_distilled_source_replaces_targets_and_drops_the_rest():
  source = [{"en": f"s{i}".encode(), "fr": f"r{i}".encode()} for i in range(5)]
  wrapped = distilled.DistilledSource(source, [b"t0", b"", b"t2"], "en", "fr")
  assert len(wrapped) == 3
  assert wrapped[2] == {"en": b"s2", "fr": b"t2"}
  assert wrapped.__getitems__([1, 0]) == [{"en": b"s1", "fr": b""},
                                          {"en": b"s0", "fr": b"t0"}]
  with pytest.raises(IndexError):
    wrapped[3]  # pylint: disable=pointless-statement
  assert list(wrapped) == [wrapped[0], wrapped[1], wrapped[2]]


def test_with_references_each_source_comes_once_with_each_target(tmp_path):
  source = [{"en": f"s{i}".encode(), "fr": f"r{i}".encode()} for i in range(5)]
  wrapped = distilled.DistilledSource(source, [b"t0", b"t1"], "en", "fr",
                                      with_references=True)
  assert list(wrapped) == [{"en": b"s0", "fr": b"t0"}, {"en": b"s1", "fr": b"t1"},
                           {"en": b"s0", "fr": b"r0"}, {"en": b"s1", "fr": b"r1"}]
  assert wrapped.__getitems__([3, 0]) == [wrapped[3], wrapped[0]]
  with pytest.raises(IndexError):
    wrapped[4]  # pylint: disable=pointless-statement
  path = tmp_path / "train.fr"
  path.write_text("t0\nt1\n")
  read = distilled.distilled_source(source, path, 2, "en", "fr", with_references=True)
  assert list(read) == list(wrapped)


def test_a_targets_file_with_too_few_lines_is_an_error(tmp_path):
  path = tmp_path / "train.fr"
  path.write_text("un\n\ntrois\n")
  assert distilled.read_targets(path, 2) == [b"un", b""]
  with pytest.raises(ValueError, match=r"has 3 lines, fewer than the 4 .* Delete it"):
    distilled.read_targets(path, 4)


def _record(**changes):
  return {"teacher": "/t", "checkpoint_dir": "/t/checkpoints", "step": 4,
          "params_sha256": "a", "tokenizer_sha256": "b", "decode": {"beam_size": 4},
          "max_len": 256, "dataset": "multi30k", "split": "train",
          "source_lang": "en", "target_lang": "fr", "lines_needed": 3, **changes}


def test_resume_point_reuse_and_refusal_of_another_teachers_file(tmp_path):
  path = tmp_path / "distill" / "train.fr"
  assert distillation.lines_done(path, _record()) == 0  # Starts: writes the record.
  partial = tmp_path / "distill" / "train.fr.partial"
  partial.write_bytes(b"un\ndeux\ntr")  # Killed in the middle of a line.
  assert distillation.lines_done(path, _record()) == 2
  assert partial.read_bytes() == b"un\ndeux\n"  # The cut line is gone.
  partial.rename(path)
  path.write_bytes(b"un\ndeux\ntrois\n")
  assert distillation.lines_done(path, _record(step=5, teacher="/elsewhere")) == 3
  # More sentences wanted: the finished file becomes the partial one again.
  assert distillation.lines_done(path, _record(lines_needed=5)) == 3
  assert partial.exists() and not path.exists()
  with pytest.raises(ValueError, match=r"(?s)another teacher.*params_sha256: 'a' there,"
                     r" 'z' now.*Delete"):
    distillation.lines_done(path, _record(params_sha256="z"))
  (tmp_path / "distill" / "train.fr.json").unlink()
  with pytest.raises(ValueError, match="has no .*train.fr.json"):
    distillation.lines_done(path, _record())


def test_a_finished_file_that_changed_since_is_not_reused(tmp_path):
  path = tmp_path / "distill" / "train.fr"
  assert distillation.lines_done(path, _record()) == 0
  path.write_bytes(b"un\ndeux\ntrois\n")
  record_file = tmp_path / "distill" / "train.fr.json"
  record_file.write_text(json.dumps({**_record(), "lines": 3,
                                     "sha256": integrity.sha256(path)}))
  assert distillation.lines_done(path, _record()) == 3
  path.write_bytes(b"un\ndeux\ntroix\n")  # Same lines, one byte changed.
  with pytest.raises(ValueError, match=r"train.fr changed after the teacher wrote it"):
    distillation.lines_done(path, _record())


# End to end on a tiny teacher (tests/conftest.py's trained_workdir: 4 smoke steps).


def _student_config(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.distill = multi30k_distill.get_config().distill
  config.distill.max_train_sentences = SENTENCES
  config.distill.chunk_sentences = CHUNK
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 1  # A shallow decoder, as in the real config.
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 1000  # Validation loss at the last step only.
  config.average_last_checkpoints = 2
  config.final_eval_splits = ("validation", "test_2016_flickr")
  # The untrained student's final scoring stays short: greedy, 4 tokens at most.
  config.decode.beam_size = 1
  config.decode.max_len_a = 0.0
  config.decode.max_len_b = 4.0
  # Rows long enough for the tiny teacher's (long, repetitive) translations.
  config.data.max_length = 64
  validate.validate_config(config)
  return config


@pytest.fixture(scope="module")
def distilled_run(smoke_config, trained_workdir, tmp_path_factory):
  """(config, student workdir, the training source the student's trainer got).

  The final scoring reads the first SCORED pairs of each split, to keep the test
  short; everything else is distill.py's own path.
  """
  config = _student_config(smoke_config)
  workdir = tmp_path_factory.mktemp("student")
  seen = {}
  run, read_split = train_and_score.trainer.run, evaluate.read_split

  def spy(config, workdir, partitioner, sources, tokenizer, **kwargs):
    seen["train"] = sources["train"]
    return run(config, workdir, partitioner, sources, tokenizer, **kwargs)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_and_score.trainer, "run", spy)
    patch.setattr(evaluate, "read_split", lambda workdir, split: tuple(
        texts[:SCORED] for texts in read_split(workdir, split)))
    distillation.distill(config, str(workdir), str(trained_workdir))
  return config, workdir, seen["train"]


def _train_pairs(config):
  """(sources, references) of the first SENTENCES training pairs."""
  source = datasets.load_sources(config.data, ["train"])["train"]
  return datasets.text_pairs(source, "en", "fr", SENTENCES)


@pytest.mark.slow
def test_the_file_is_the_teachers_translation_of_the_first_sentences(
    distilled_run, trained_workdir):
  config, workdir, _ = distilled_run
  path = workdir / "distill" / "train.fr"
  lines = path.read_text(encoding="utf-8").split("\n")
  assert lines[-1] == "" and len(lines) - 1 == SENTENCES
  teacher = Translator.from_workdir(str(trained_workdir))
  expected = [t.text for t in teacher.translate(_train_pairs(config)[0])]
  assert lines[:-1] == expected
  record = json.loads((workdir / "distill" / "train.fr.json").read_text())
  assert (record["step"], record["lines"]) == (4, SENTENCES)
  assert record["checkpoint_dir"] == str(layout.checkpoint_dir(trained_workdir))
  assert not (workdir / "distill" / "train.fr.partial").exists()


@pytest.mark.slow
def test_the_student_trained_on_the_teachers_and_the_reference_targets_and_was_scored(
    distilled_run, trained_workdir):
  config, workdir, source = distilled_run
  teacher_lines = (workdir / "distill" / "train.fr").read_bytes().split(b"\n")
  sources, references = _train_pairs(config)
  assert config.distill.with_references  # As configs/multi30k_distill.py has it:
  assert len(source) == 2 * SENTENCES  # each source with both targets.
  for i in (0, CHUNK, SENTENCES - 1):
    assert source[i] == {"en": sources[i].encode(), "fr": teacher_lines[i]}
    assert source[SENTENCES + i] == {"en": sources[i].encode(),
                                     "fr": references[i].encode()}
  assert ((workdir / "spm.model").read_bytes()
          == (trained_workdir / "spm.model").read_bytes())
  assert layout.checkpoint_steps(workdir / "averaged_last2") == [4]
  saved = layout.read_config(workdir).model
  assert (saved.num_encoder_layers, saved.num_decoder_layers) == (2, 1)
  results = json.loads((workdir / "results.json").read_text())
  assert [r["data"] for r in results] == ["validation", "test_2016_flickr"]
  assert all(r["step"] == 4 and r["averaged_checkpoints"] == 2
             and r["sentences"] == SCORED and r["bleu_lc_tok"] >= 0 for r in results)


@pytest.mark.slow
def test_a_rerun_reuses_or_resumes_the_file_and_another_teacher_is_refused(
    distilled_run, trained_workdir, tmp_path, monkeypatch):
  config, workdir, _ = distilled_run
  teacher, path = str(trained_workdir), workdir / "distill" / "train.fr"
  checkpoints = str(layout.checkpoint_dir(trained_workdir))
  finished = path.read_bytes()
  calls = []
  translate = Translator.translate

  def counting(self, texts, **kwargs):
    calls.append(len(texts))
    return translate(self, texts, **kwargs)
  monkeypatch.setattr(Translator, "translate", counting)
  assert distillation.translate_train(config, str(workdir), teacher, checkpoints) == (
      path, SENTENCES)
  assert calls == [] and path.read_bytes() == finished  # Reused, not translated.

  # Interrupted after the first chunk and part of a line: only the rest is translated.
  path.rename(path.with_name("train.fr.partial"))
  path.with_name("train.fr.partial").write_bytes(
      b"\n".join(finished.split(b"\n")[:CHUNK]) + b"\nhalf a li")
  distillation.translate_train(config, str(workdir), teacher, checkpoints)
  assert calls == [SENTENCES - CHUNK] and path.read_bytes() == finished

  # Another teacher: the same run's step-2 checkpoint.
  other = tmp_path / "other"
  shutil.copytree(layout.checkpoint_dir(trained_workdir) / "2", other / "2")
  with pytest.raises(ValueError, match=r"(?s)another teacher.*params_sha256"):
    distillation.translate_train(config, str(workdir), teacher, str(other))
  assert path.read_bytes() == finished


@pytest.mark.slow
def test_teacher_checks(smoke_config, trained_workdir, tmp_path):
  assert distillation.teacher_checkpoint_dir(str(trained_workdir)) == str(
      layout.checkpoint_dir(trained_workdir))  # No average: its last checkpoint.
  unfinished = tmp_path / "unfinished"
  shutil.copytree(trained_workdir, unfinished,
                  ignore=shutil.ignore_patterns("tensorboard", "*.png"))
  config = json.loads((unfinished / "config.json").read_text())
  config["num_train_steps"] = 6
  (unfinished / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"ends at step 4, .* trains to step 6"):
    distillation.teacher_checkpoint_dir(str(unfinished))
  student = tmp_path / "student"
  student.mkdir()
  (student / "spm.model").write_bytes(b"another tokenizer")
  with pytest.raises(ValueError, match="is not the teacher's tokenizer"):
    distillation.copy_tokenizer(str(trained_workdir), str(student))
  other_direction = _student_config(smoke_config)
  other_direction.data.source_lang, other_direction.data.target_lang = "fr", "en"
  with pytest.raises(validate.ConfigError, match=r"data\.source_lang: teacher 'en'"):
    distillation.check_teacher(other_direction, str(trained_workdir))
