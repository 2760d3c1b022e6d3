"""Sequence-level knowledge distillation (Kim & Rush, 2016) in one command:

  python distill.py --config=configs/multi30k_distill.py --workdir=STUDENT \\
      --teacher=TEACHER_WORKDIR

The three stages (the teacher's tokenizer, its translations of the training split,
the student trained on them and scored like train.py's run) are recipes/distillation.py.

Rerunning the command resumes whichever stage was interrupted. Multi-process runs
take train.py's flags: every process decodes (the decoder is SPMD), process 0 writes.
"""
from absl import app
from absl import flags

# --config (default configs/default.py, which has no `distill` block: pass
# --config=configs/multi30k_distill.py), --workdir and the multi-process flags.
from cli import logs
from cli import training_flags
from recipes import distillation
from training import lock

_TEACHER = flags.DEFINE_string(
    "teacher", None, "The teacher's training workdir (config.json, spm.model,"
    " checkpoints).", required=True)
_TEACHER_CHECKPOINT_DIR = flags.DEFINE_string(
    "teacher_checkpoint_dir", None, "Read the teacher's parameters (latest step) from"
    " here; default: TEACHER/averaged_last<N> if present, else TEACHER/checkpoints.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = training_flags.CONFIG.value, training_flags.WORKDIR.value
  distillation.check_config(config)  # Before anything is written.
  training_flags.initialize_distributed()  # Before anything touches the devices.
  with lock.workdir_lock(workdir):  # The student trains here: one run at a time.
    distillation.distill(config, workdir, _TEACHER.value,
                         _TEACHER_CHECKPOINT_DIR.value)


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
