"""Sequence-level knowledge distillation (Kim & Rush, 2016): what distill.py runs.

1. STUDENT/spm.model becomes the teacher's tokenizer (one vocabulary for both).
2. The teacher (its averaged checkpoint, its config.decode beam search) translates
   the source side of the training split into STUDENT/distill/train.<target_lang>,
   one line per example in the dataset's index order; STUDENT/distill/
   train.<target_lang>.json records which teacher and settings made it, and the
   finished file's sha256. Chunks are appended to a `.partial` file (each synced
   to disk), so an interrupted run, even one killed with SIGKILL, continues where
   it stopped (a cut last line is dropped); a finished file is reused only if its
   sha256 still matches, never one made by another teacher.
3. The student trains on (source, teacher output) pairs (with
   `distill.with_references`, on the original pairs too) with
   `train_and_score.train_and_score`, which averages its last checkpoints and scores
   them against the dataset's own references (STUDENT/results.json), exactly as
   train.py does.

Every stage resumes where an interrupted run stopped. Every process decodes (the
decoder is SPMD); process 0 writes.
"""
import dataclasses
import hashlib
import json
import os
import time

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from data import datasets
from data import distilled
from data import tokenizer as tokenizer_lib
from inference.translator import Translator
from parallel import processes
from recipes import train_and_score
from storage import files
from storage import integrity
from storage import layout
from training import validate

DISTILL_DIR = "distill"  # STUDENT/distill/ holds the teacher's translations.
# Fields of the record that must match for a translation file to be reused.
_IDENTITY = ("params_sha256", "tokenizer_sha256", "decode", "max_len", "dataset",
             "split", "source_lang", "target_lang")


def teacher_checkpoint_dir(teacher: str, given: str | None = None) -> str:
  """Where the teacher's parameters come from: `given`, else its final average, else
  its checkpoints; the default must be the teacher's last step (a finished run)."""
  if given:
    logging.info("Teacher parameters: the latest step of %s"
                 " (--teacher_checkpoint_dir).", given)
    return given
  config = layout.read_config(teacher)
  directory = layout.final_average_dir(teacher)
  steps = layout.checkpoint_steps(directory) if directory else []
  what = (f"its average of the last {config.get('average_last_checkpoints')}"
          " checkpoints")
  if not steps:
    directory = layout.checkpoint_dir(teacher)
    steps = layout.checkpoint_steps(directory)
    what = "its last training checkpoint (it has no averaged one)"
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {directory}: {teacher} is not a trained"
                            " teacher. Train it with train.py first.")
  if steps[-1] != config.num_train_steps:
    raise ValueError(
        f"{directory} ends at step {steps[-1]}, but the teacher's config"
        f" ({teacher}/config.json) trains to step {config.num_train_steps}: the teacher"
        " has not finished. Let it finish (rerun its train.py command), or pass"
        f" --teacher_checkpoint_dir={directory} to distill from step {steps[-1]}.")
  logging.info("Teacher parameters: %s, step %d, from %s.", what, steps[-1], directory)
  return str(directory)


def check_teacher(config, teacher: str) -> None:
  """The student reads the data the teacher was trained on, in the same direction."""
  data = layout.read_config(teacher).data
  differ = [f"data.{f}: teacher {data[f]!r}, student {config.data[f]!r}"
            for f in ("dataset", "source_lang", "target_lang")
            if data[f] != config.data[f]]
  if differ:
    raise validate.ConfigError(f"The student's config does not match the teacher's"
                               f" ({teacher}/config.json): " + "; ".join(differ)
                               + ". Set the student's fields to the teacher's.")


def copy_tokenizer(teacher: str, workdir: str) -> None:
  """STUDENT/spm.model := the teacher's (checked against the teacher's run.json).

  A student workdir holding another spm.model is an error, not overwritten: its
  checkpoints (if any) were trained with it. training's own checks then bind the
  student's run to this tokenizer (run.json).
  """
  proto = tokenizer_lib.load_from_workdir(teacher).proto
  path = epath.Path(workdir) / layout.TOKENIZER_FILE

  def copy():
    if path.exists():
      if path.read_bytes() != proto:
        raise ValueError(
            f"{path} is not the teacher's tokenizer ({teacher}/spm.model): a student"
            " must share its teacher's vocabulary. Use a new --workdir for this"
            " teacher, or the teacher this student was started with.")
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, proto)
    logging.info("Copied the teacher's tokenizer to %s.", path)
  processes.on_process_0(copy, f"copy the teacher's tokenizer to {path}")


def params_sha256(params) -> str:
  """A digest of the parameters' values: tells one teacher from another."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params),
                           key=lambda item: jax.tree_util.keystr(item[0])):
    array = (leaf.addressable_data(0) if leaf.sharding.is_fully_replicated
             else multihost_utils.process_allgather(leaf, tiled=True))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
  return digest.hexdigest()


def targets_path(workdir: str, target_lang: str) -> epath.Path:
  return files.absolute(workdir) / DISTILL_DIR / f"train.{target_lang}"


def _partial(path: epath.Path) -> epath.Path:
  return path.with_name(path.name + ".partial")


def _record_path(path: epath.Path) -> epath.Path:
  return path.with_name(path.name + ".json")


def _complete_lines(path: epath.Path) -> int:
  """Lines of `path` ended by a newline; a cut last line (a killed write) is dropped."""
  data = path.read_bytes()
  end = data.rfind(b"\n") + 1
  if end < len(data):
    files.atomic_write(path, data[:end])
  return data.count(b"\n")


def _append(path: epath.Path, data: bytes) -> None:
  """Adds `data` at the end of `path`, on disk when it returns (a bucket: rewritten)."""
  if files.is_remote(path):
    path.write_bytes((path.read_bytes() if path.exists() else b"") + data)
    return
  with open(path, "ab") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def lines_done(path: epath.Path, record: dict) -> int:
  """Lines already translated by this teacher (resume point); another teacher's
  file is an error naming what differs. Leaves unfinished work in the partial file."""
  record_file, partial = _record_path(path), _partial(path)
  if not (path.exists() or partial.exists()):
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(record_file, json.dumps(record, indent=1))
    return 0
  if not record_file.exists():
    raise ValueError(f"{path} (or its .partial) has no {record_file} saying which"
                     f" teacher made it. Delete {path.parent} to translate again.")
  saved = json.loads(record_file.read_text())
  differ = [f"{k}: {saved.get(k, '<absent>')!r} there, {record[k]!r} now"
            for k in _IDENTITY if saved.get(k) != record[k]]
  if differ:
    raise ValueError(
        f"{path} (or its .partial) was made by another teacher or with other settings"
        f" than {record['teacher']} ({record['checkpoint_dir']}, step"
        f" {record['step']}), as {record_file} says:\n  " + "\n  ".join(differ)
        + f"\nDelete {path.parent} to translate with this teacher, or use a new"
        " --workdir (the student trained on the old file is kept there).")
  if path.exists():
    actual = integrity.sha256(path) if "sha256" in saved else None
    if actual is not None and actual != saved["sha256"]:
      raise ValueError(
          f"{path} changed after the teacher wrote it: its sha256 is"
          f" {actual[:12]}..., {record_file} says"
          f" {saved['sha256'][:12]}.... Delete {path} to translate again.")
    done = _complete_lines(path)
    if done >= record["lines_needed"]:
      return done
    path.rename(partial)  # More sentences wanted now: continue it.
  return _complete_lines(partial)


def translate_train(config, workdir: str, teacher: str, checkpoint_dir: str
                    ) -> tuple[epath.Path, int]:
  """Writes the teacher's translations of the training sources (see the module doc).

  Returns the finished file and how many of its first lines are the targets
  (`distill.max_train_sentences`, or the whole split).
  """
  data_cfg, options = config.data, config.distill
  train_source = datasets.load_sources(data_cfg, ["train"])["train"]
  count = (len(train_source) if options.max_train_sentences < 0
           else min(options.max_train_sentences, len(train_source)))
  translator = Translator.from_workdir(teacher, checkpoint_dir=checkpoint_dir,
                                       batch_tokens=options.batch_tokens)
  path = targets_path(workdir, data_cfg.target_lang)
  record = {
      "teacher": str(files.absolute(teacher)),
      "checkpoint_dir": str(files.absolute(checkpoint_dir)),
      "step": translator.step, "params_sha256": params_sha256(translator.params),
      "tokenizer_sha256": tokenizer_lib.record(translator.tokenizer.proto)["sha256"],
      "decode": dataclasses.asdict(translator.settings), "max_len": translator.max_len,
      "dataset": data_cfg.dataset, "split": "train",
      "source_lang": data_cfg.source_lang, "target_lang": data_cfg.target_lang,
      "lines_needed": count}
  done = processes.on_process_0(lambda: lines_done(path, record), f"read {path}")
  if done >= count:
    logging.info("Reusing %s: %d lines by teacher step %d, %d needed.", path, done,
                 translator.step, count)
    return path, count
  logging.info("Translating training sentences %d to %d of %d with the teacher into"
               " %s (beam %d).", done + 1, count, len(train_source), _partial(path),
               translator.settings.beam_size)
  for start in range(done, count, options.chunk_sentences):
    stop = min(start + options.chunk_sentences, count)
    began = time.perf_counter()
    sources = [datasets.decode_text(ex[data_cfg.source_lang]) for ex in
               datasets.read_examples(train_source, range(start, stop))]
    texts = [t.text for t in translator.translate(
        sources, name=f"{data_cfg.dataset} train", first_line=start + 1,
        progress=jax.process_index() == 0)]
    data = "".join(text + "\n" for text in texts).encode("utf-8")
    processes.on_process_0(lambda: _append(_partial(path), data),
                           f"append to {_partial(path)}")
    logging.info("Teacher: lines %d-%d of %d in %.1f s.", start + 1, stop, count,
                 time.perf_counter() - began)

  def finish():
    _partial(path).rename(path)
    files.atomic_write(_record_path(path), json.dumps(
        {**record, "lines": count, "sha256": integrity.sha256(path)}, indent=1))
  processes.on_process_0(finish, f"finish {path}")
  return path, count


def check_config(config) -> None:
  """The student's config must be trainable and have a `distill` block."""
  if "distill" not in config:
    raise validate.ConfigError("The config has no `distill` block: use"
                               " --config=configs/multi30k_distill.py or add one.")
  validate.validate_config(config)


def distill(config, workdir: str, teacher: str,
            checkpoint_dir: str | None = None) -> None:
  """The whole pipeline in `workdir` (the student's); see the module doc."""
  check_config(config)
  check_teacher(config, teacher)
  checkpoint_dir = teacher_checkpoint_dir(teacher, checkpoint_dir)
  copy_tokenizer(teacher, workdir)
  path, count = translate_train(config, workdir, teacher, checkpoint_dir)
  data_cfg = config.data
  train_and_score.train_and_score(config, workdir, train_transform=lambda source: (
      distilled.distilled_source(source, path, count, data_cfg.source_lang,
                                 data_cfg.target_lang,
                                 config.distill.with_references)))
