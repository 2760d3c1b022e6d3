"""Writes a trained model as a CTranslate2 model directory, a bundle or StableHLO.

  python export.py --workdir=DIR --format=ctranslate2 --output=DIR [--quantization=int8]
  python export.py --config=configs/transformer_base.py --output=DIR  # Random weights.
  python export.py --workdir=DIR --format=bundle --output=DIR [--quantize=int8]
  python export.py --workdir=DIR --format=stablehlo --output=DIR  # + compiled search
  python export.py --workdir=DIR --format=onnx --output=DIR [--quantize=int8]

CTranslate2 needs the optional ctranslate2 package (inference/export.py). A bundle
(inference/bundle.py) is what `infer.py` and `serve.py` load as --workdir, without
the training workdir; a StableHLO directory is a bundle with the beam search
serialized by jax.export (inference/stablehlo.py), which `runners/stablehlo.py` runs
with jax, numpy and sentencepiece alone; an ONNX directory is a bundle with the beam
search converted by jax2onnx (inference/onnx_export.py), which `runners/onnx.py` runs
with onnxruntime, numpy and sentencepiece. Every directory (with the run's spm.model,
MODEL_CARD.md and a SHA256SUMS manifest) replaces an earlier export whole,
atomically. Prints one JSON line.
"""
import functools
import json
import os

from absl import app
from absl import flags

from cli import inference_flags
from cli import logs
from data import tokenizer as tokenizer_lib
from inference import bundle
from inference import export
from inference import model_card
from inference import onnx_export
from inference import stablehlo
from models import transformer

inference_flags.define_checkpoint()
inference_flags.define_random_weights()
_FORMAT = flags.DEFINE_enum("format", "ctranslate2",
                            ["ctranslate2", "bundle", "stablehlo", "onnx"],
                            "The format written to the --output directory.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", "int8", "int8_weights"],
                              "--format=bundle or stablehlo: store the dense layers"
                              " as int8 (models/quantization.py modes); default"
                              " float32. --format=onnx: int8 is onnxruntime's"
                              " dynamic quantization of the programs' MatMuls.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", None, "--format=onnx: the beam width"
                                  " compiled into the programs (1: greedy); default:"
                                  " the run's config.decode.beam_size.", lower_bound=1)
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
  workdir = flags.FLAGS.workdir
  if _BEAM_SIZE.value is not None and _FORMAT.value != "onnx":
    raise app.UsageError("--beam_size is for --format=onnx; the other formats decode"
                         " with any beam width.")
  if _FORMAT.value in ("bundle", "stablehlo", "onnx"):
    if not workdir:
      raise app.UsageError(f"--format={_FORMAT.value} needs --workdir (a trained run).")
    quantize = None if _QUANTIZE.value == "none" else _QUANTIZE.value
    if _FORMAT.value == "onnx":
      if quantize not in onnx_export.QUANTIZE:
        raise app.UsageError(f"--format=onnx --quantize={quantize}: ONNX programs are"
                             " float32 or int8.")
      write = functools.partial(onnx_export.export_onnx, beam_size=_BEAM_SIZE.value)
    else:
      write = (bundle.write_bundle if _FORMAT.value == "bundle"
               else stablehlo.export_stablehlo)
    info = write(workdir, _OUTPUT.value, step=flags.FLAGS.step,
                 checkpoint_dir=flags.FLAGS.checkpoint_dir, quantize=quantize)
    print(json.dumps({"format": _FORMAT.value,
                      "output": os.path.abspath(_OUTPUT.value),
                      "weights": info["weights"] if _FORMAT.value != "onnx"
                                 else quantize or "float32", "step": info["step"],
                      "parameters": info["card"]["model"]["parameters"]}))
    return
  config, _, model = inference_flags.checkpoint_or_random("export.py")
  vocab = (tokenizer_lib.load_from_workdir(workdir) if workdir
           else export.synthetic_vocabulary(flags.FLAGS.vocab_size))
  weights = _QUANTIZATION.value or "float32"
  card = (model_card.render(model_card.facts(
      workdir, config, parameters=transformer.count_params(model.params),
      step=model.step, weights=weights), f"CTranslate2, {weights} weights")
          if workdir else None)
  output = export.export_ctranslate2(model.graphdef, model.params, model.model_config,
                                     vocab, _OUTPUT.value,
                                     quantization=_QUANTIZATION.value, card=card)
  print(json.dumps({"format": _FORMAT.value, "output": output,
                    "quantization": _QUANTIZATION.value,
                    "parameters": transformer.count_params(model.params)}))


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
