"""Builds a run's vocabulary shortlist, WORKDIR/shortlist.npz; prints one JSON line.

  python shortlist.py --workdir=DIR [--always=200] [--per_source=20]
  python infer.py --mode=evaluate --workdir=DIR --split=test_2016_flickr --use_shortlist

Each sentence's translation then ranks the `always` most frequent target tokens and,
per source token, the `per_source` target tokens seen with it in most training pairs
(inference/shortlist.py), instead of the whole vocabulary. The line reports how many
validation reference tokens fall inside their sentence's shortlist.
"""
import json

from absl import app
from absl import flags

from cli import inference_flags
from cli import logs
from recipes import shortlist

inference_flags.define_workdir()
_ALWAYS = flags.DEFINE_integer("always", 200, "Most frequent target tokens every"
                               " sentence may emit.", lower_bound=0)
_PER_SOURCE = flags.DEFINE_integer("per_source", 20, "Target tokens added per source"
                                   " token (those seen with it in most pairs).",
                                   lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = inference_flags.workdir("shortlist.py")
  print(json.dumps(shortlist.build_for_workdir(workdir, always=_ALWAYS.value,
                                               per_source=_PER_SOURCE.value)))


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
