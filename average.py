"""Averages a run's last checkpoints into a params-only checkpoint; prints its dir.

  python average.py --workdir=DIR --average_last=5

The result, WORKDIR/averaged_last<N>/<last step>/, is read like any checkpoint:
`infer.py --checkpoint_dir=WORKDIR/averaged_last<N>`.
"""
from absl import app
from absl import flags

from cli import inference_flags
from cli import logs
from inference import restore
from inference.translator import inference_partitioner
from storage import layout

inference_flags.define_workdir()
_AVERAGE_LAST = flags.DEFINE_integer("average_last", 5, "Checkpoints to average"
                                     " (>= 1).", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = inference_flags.workdir("average.py")
  config = layout.read_config(workdir)
  print(restore.average_checkpoints(workdir, inference_partitioner(config),
                                    _AVERAGE_LAST.value))


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
