"""Writes a trained model (or random weights) as a CTranslate2 model directory.

  python export.py --workdir=DIR --format=ctranslate2 --output=DIR [--quantization=int8]
  python export.py --config=configs/transformer_base.py --output=DIR  # Random weights.

Needs the optional ctranslate2 package (inference/export.py). The directory (with the
run's spm.model and a SHA256SUMS manifest) replaces an earlier export whole, atomically.
Prints one JSON line.
"""
import json

from absl import app
from absl import flags

from cli import inference_flags
from cli import logs
from data import tokenizer as tokenizer_lib
from inference import export
from models import transformer

inference_flags.define_checkpoint()
inference_flags.define_random_weights()
_FORMAT = flags.DEFINE_enum("format", "ctranslate2", ["ctranslate2"],
                            "The format written to the --output directory.")
_OUTPUT = flags.DEFINE_string("output", None, "The model directory to write.")
_QUANTIZATION = flags.DEFINE_string("quantization", None, "Weight type of the exported"
                                    " model, e.g. int8 (CTranslate2 quantizes the"
                                    " float weights itself); default float32.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _OUTPUT.value:
    raise app.UsageError("export.py needs --output=DIR, the model directory.")
  try:  # Before the model loads.
    export.check_output_dir(_OUTPUT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  _, _, model = inference_flags.checkpoint_or_random("export.py")
  workdir = flags.FLAGS.workdir
  vocab = (tokenizer_lib.load_from_workdir(workdir) if workdir
           else export.synthetic_vocabulary(flags.FLAGS.vocab_size))
  output = export.export_ctranslate2(model.graphdef, model.params, model.model_config,
                                     vocab, _OUTPUT.value,
                                     quantization=_QUANTIZATION.value)
  print(json.dumps({"format": _FORMAT.value, "output": output,
                    "quantization": _QUANTIZATION.value,
                    "parameters": transformer.count_params(model.params)}))


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
