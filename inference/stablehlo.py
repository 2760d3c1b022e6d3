"""A portable compiled decoder: the encoder and the whole beam search as StableHLO.

`export.py --format=stablehlo` writes a model bundle (inference/bundle.py) plus

  stablehlo/manifest.json       the programs, their shapes, the parameter order
  stablehlo/search_RxL.jax      `jax.export` of the beam search for R rows of L tokens

Each program takes (parameters in manifest order, inputs [R, L] int32, alpha,
max_len_a, max_len_b) and returns (tokens [R, max_decode_len], scores [R]): the best
hypothesis of the one-call search (`models.decoding.beam_search`, which the segmented
search equals). It is lowered for every platform in the manifest (CPU, CUDA and TPU by
default) into one serialized module, which StableHLO's compatibility guarantees let a
later jax load. `runners/stablehlo.py` translates with it using only jax, numpy and
sentencepiece; nothing traces there, only XLA compiles.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp

from data import tokenizer as tokenizer_lib
from inference import bundle as bundle_lib
from models import decoding

DIRECTORY = "stablehlo"
MANIFEST = "manifest.json"
PLATFORMS = ("cpu", "cuda", "tpu")
# (rows, source tokens) compiled by default: one sentence, a small and a full batch,
# for sources up to 16, 32 and 64 tokens (EOS included).
SHAPES = tuple((rows, length) for length in (16, 32, 64) for rows in (1, 8, 32))


def _program(graphdef, treedef, settings, max_decode_len: int):
  """search(leaves, inputs, alpha, a, b) -> (best tokens, best scores)."""
  def search(leaves, inputs, alpha, max_len_a, max_len_b):
    params = jax.tree.unflatten(treedef, leaves)
    out = decoding.beam_search(graphdef, params, inputs, alpha, max_len_a, max_len_b,
                               eos_id=tokenizer_lib.EOS_ID,
                               beam_size=settings.beam_size,
                               max_decode_len=max_decode_len, nbest=1)
    return out.tokens[:, 0], out.scores[:, 0]  # [rows, max_decode_len], [rows]
  return search


def write_programs(staging: str, loaded: bundle_lib.Bundle, *,
                   shapes=SHAPES, platforms=PLATFORMS) -> dict:
  """Serializes the search of `loaded` for each (rows, length) into
  STAGING/stablehlo; returns the manifest."""
  settings, model_cfg = loaded.settings, loaded.model.model_config
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(
      loaded.model.params)
  leaves = [x for _, x in leaves_with_paths]
  spec = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  os.makedirs(os.path.join(staging, DIRECTORY), exist_ok=True)
  programs = []
  for rows, length in shapes:
    max_decode_len = settings.cache_length(length, model_cfg.max_len)
    search = _program(loaded.model.graphdef, treedef, settings, max_decode_len)
    exported = jax.export.export(jax.jit(search), platforms=platforms)(
        spec, jax.ShapeDtypeStruct((rows, length), jnp.int32), scalar, scalar, scalar)
    name = f"search_{rows}x{length}.jax"
    with open(os.path.join(staging, DIRECTORY, name), "wb") as f:
      f.write(exported.serialize())
    programs.append({"rows": rows, "src_len": length,
                     "max_decode_len": max_decode_len, "file": name})
  manifest = {
      "platforms": list(platforms), "programs": programs,
      "param_names": [bundle_lib.param_name(p) for p, _ in leaves_with_paths],
      "decode": dataclasses.asdict(settings),
      "eos_id": tokenizer_lib.EOS_ID, "pad_id": tokenizer_lib.PAD_ID,
      "jax_version": jax.__version__,
  }
  with open(os.path.join(staging, DIRECTORY, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def export_stablehlo(workdir: str, output: str, *, step: int | None = None,
                     checkpoint_dir: str | None = None, quantize: str | None = None,
                     shapes=SHAPES, platforms=PLATFORMS) -> dict:
  """A bundle of the workdir's checkpoint with its compiled search; bundle.json."""
  def add_programs(staging: str, bundle: bundle_lib.Bundle) -> None:
    write_programs(staging, bundle, shapes=shapes, platforms=platforms)
  return bundle_lib.write_bundle(workdir, output, step=step,
                                 checkpoint_dir=checkpoint_dir, quantize=quantize,
                                 add_files=add_programs)
