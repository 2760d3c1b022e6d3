"""BLEU of a finished run over beam sizes and length penalties, one JSON line each.

  python bench/decode_sweep.py --workdir=workdir/distill --beam_sizes=1,2,3,4 \
      --alphas=0.6,1.0

Decode settings are hyperparameters like any other: choose them on validation (the
default split), never on test. The run's final average (else its latest checkpoint)
is restored once and compiled once per beam size; alpha is traced, so it costs no
compilation.
"""
import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from inference import bleu
from inference import evaluate
from inference.translator import Translator
from storage import layout

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split translated and scored.")
_BEAMS = flags.DEFINE_list("beam_sizes", ["1", "2", "4"], "Beam widths.")
_ALPHAS = flags.DEFINE_list("alphas", ["0.6", "1.0"], "GNMT length penalty exponents.")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", -1, "Score the split's first N"
                                      " pairs only (-1: all; fewer are for trials).")


def main(argv):
  del argv
  averaged = layout.final_average_dir(_WORKDIR.value)
  translator = Translator.from_workdir(
      _WORKDIR.value, checkpoint_dir=averaged and str(averaged))
  sources, references = evaluate.read_split(_WORKDIR.value, _SPLIT.value)
  if _MAX_SENTENCES.value >= 0:
    sources, references = (sources[:_MAX_SENTENCES.value],
                           references[:_MAX_SENTENCES.value])
  for beam in (int(b) for b in _BEAMS.value):
    for alpha in (float(a) for a in _ALPHAS.value):
      texts = [t.text for t in translator.translate(sources, beam_size=beam,
                                                    alpha=alpha)]
      scores = bleu.score(texts, references)
      print(json.dumps({"workdir": _WORKDIR.value, "step": translator.step,
                        "split": _SPLIT.value, "beam_size": beam, "alpha": alpha,
                        **{k: scores[k] for k in ("bleu_lc_tok", "sacrebleu", "chrf",
                                                  "sentences")}}),
            flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
