"""A model bundle: one directory that translates without the training workdir.

  bundle.json     the model and decode configuration, the weights' kind, the card
  params.npz      the parameters by pytree path (float32, or int8 with float32 scales)
  spm.model       the tokenizer
  MODEL_CARD.md   data, recipe, command, BLEU of each split (inference/model_card.py)
  SHA256SUMS      every file's digest, checked on load (storage/integrity.py)

`write_bundle` builds it beside an earlier one and swaps it in whole; `load_bundle`
(and `Translator.from_bundle`) restores it on any mesh. numpy's .npz keeps int8 as
int8, so an int8 bundle is about a quarter of the float32 one.
"""
from collections.abc import Callable
import dataclasses
import io
import json
import os
import shutil

from etils import epath
import jax
import ml_collections
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import export
from inference import model_card
from inference import restore
from inference.decoder import DecodeSettings
from models import quantization
from models import transformer
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from storage import files
from storage import integrity
from storage import layout

BUNDLE_FILE = "bundle.json"
PARAMS_FILE = "params.npz"
FORMAT_VERSION = 1
WEIGHTS = (None, "int8", "int8_weights")  # `quantize` modes a bundle may store.


def is_bundle(path) -> bool:
  return (epath.Path(path) / BUNDLE_FILE).exists()


def param_name(path) -> str:
  """A parameter's pytree path as a name: 'encoder_layers/0/attn/query/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def _flat(params) -> dict[str, np.ndarray]:
  """{name: host array} of a parameter pytree."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {param_name(path): np.asarray(jax.device_get(x)) for path, x in leaves}


def write_bundle(workdir: str, output: str, *, step: int | None = None,
                 checkpoint_dir: str | None = None, quantize: str | None = None,
                 add_files: Callable[[str, "Bundle"], None] | None = None) -> dict:
  """Writes the bundle of a workdir's checkpoint (default: its latest) to `output`.

  `quantize` ('int8', 'int8_weights'; models/quantization.py) stores the int8 layers
  as int8. `add_files(staging, bundle)` may add files made from the bundle, as it
  would load, before it is swapped in (e.g. its compiled programs,
  inference/stablehlo.py). Returns bundle.json's content.
  """
  if quantize not in WEIGHTS:
    raise ValueError(f"--quantize={quantize!r}: a bundle stores float32 or one of"
                     f" {WEIGHTS[1:]}.")
  output = os.path.abspath(os.fspath(output))
  export.check_output_dir(output)
  config = layout.read_config(workdir)
  tokenizer = tokenizer_lib.load_from_workdir(workdir)
  stored_config = restore.model_config(workdir, config, tokenizer)
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]),
                            config.logical_axis_rules)
  model = restore.restore_params(workdir, partitioner, step=step,
                                 checkpoint_dir=checkpoint_dir, dtype="float32",
                                 quantize=quantize, stored_config=stored_config)
  weights = quantize or "float32"
  settings = DecodeSettings.from_config(config.get("decode"))
  # The model's own count: int8 layers hold a scale per output channel besides.
  parameters = transformer.count_params(
      partitioner.abstract_params(stored_config.make_model())[1])
  info = {
      "format_version": FORMAT_VERSION, "weights": weights, "step": model.step,
      "model": config.model.to_dict(), "vocab_size": tokenizer.vocab_size,
      "decode": dataclasses.asdict(settings),
      "card": model_card.facts(workdir, config, parameters=parameters,
                               step=model.step, weights=weights),
  }
  files.recover_dir(output)
  staging = files.staging_dir(output)
  try:
    buffer = io.BytesIO()
    np.savez(buffer, **_flat(model.params))
    files.atomic_write(os.path.join(staging, PARAMS_FILE), buffer.getvalue())
    files.atomic_write(os.path.join(staging, layout.TOKENIZER_FILE), tokenizer.proto)
    files.atomic_write(os.path.join(staging, BUNDLE_FILE), json.dumps(
        info, indent=1, allow_nan=False))
    files.atomic_write(os.path.join(staging, model_card.CARD_FILE), model_card.render(
        info["card"], f"bundle, {weights} weights"))
    integrity.write_manifest(staging)
    if add_files is not None:
      add_files(staging, Bundle(model=model, tokenizer=tokenizer, settings=settings,
                                info=info))
      integrity.write_manifest(staging)
    files.replace_dir(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return info


def read_info(path) -> dict:
  """bundle.json of the bundle at `path`."""
  return json.loads((epath.Path(path) / BUNDLE_FILE).read_text())


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A loaded bundle: the frozen model as pytrees, its tokenizer and decode defaults."""
  model: restore.Restored
  tokenizer: tokenizer_lib.Tokenizer
  settings: DecodeSettings
  info: dict  # bundle.json


def _abstract(model_cfg: transformer.TransformerConfig, partitioner: Partitioner,
              weights: str):
  """(graphdef, abstract params) of the model a bundle of `weights` holds."""
  graphdef, abstract = partitioner.abstract_params(model_cfg.make_model())
  if weights == "float32":
    return graphdef, abstract
  quantized = {}

  def quantize(params):
    quantized["graphdef"], params = quantization.quantize(graphdef, params, weights)
    return params
  abstract = jax.eval_shape(quantize, abstract)
  return quantized["graphdef"], abstract


def load_bundle(path: str, partitioner: Partitioner) -> Bundle:
  """Restores the bundle at `path` onto `partitioner`'s mesh (parameters replicated).

  Every file is checked against SHA256SUMS first; a missing or changed file, a
  parameter of another shape or type, or a non-finite value is an error naming it.
  """
  path = files.absolute(path)
  if not integrity.verify(path):
    raise FileNotFoundError(f"{path} has no {integrity.MANIFEST}: not a complete"
                            " bundle. Export it again (export.py --format=bundle).")
  info = read_info(path)
  if info.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path / BUNDLE_FILE}: format_version"
                     f" {info.get('format_version')!r}, this code reads"
                     f" {FORMAT_VERSION}. Export it again with this version.")
  tokenizer = tokenizer_lib.Tokenizer((path / layout.TOKENIZER_FILE).read_bytes())
  model_cfg = transformer.TransformerConfig.from_config(
      ml_collections.ConfigDict(info["model"]), vocab_size=info["vocab_size"],
      pad_id=tokenizer_lib.PAD_ID).with_dtype("float32")
  graphdef, abstract = _abstract(model_cfg, partitioner, info["weights"])
  with np.load(io.BytesIO((path / PARAMS_FILE).read_bytes())) as stored:
    arrays = dict(stored)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  values = []
  for key, leaf in leaves:
    name = param_name(key)
    array = arrays.get(name)
    if array is None or array.shape != leaf.shape or array.dtype != leaf.dtype:
      found = "missing" if array is None else f"{array.dtype}{list(array.shape)}"
      raise ValueError(f"{path / PARAMS_FILE}: {name} is {found}, the model of"
                       f" {BUNDLE_FILE} needs {leaf.dtype}{list(leaf.shape)}.")
    values.append(jax.device_put(array, partitioner.replicated))
  params = jax.tree.unflatten(treedef, values)
  if bad := integrity.non_finite(params):
    raise ValueError(f"{path / PARAMS_FILE}: non-finite values in {bad[:3]}.")
  return Bundle(model=restore.Restored(graphdef, params, model_cfg, info["step"]),
                tokenizer=tokenizer, settings=DecodeSettings(**info["decode"]),
                info=info)
