"""The whole beam search as ONNX, for onnxruntime: `export.py --format=onnx`.

It writes a model bundle (inference/bundle.py) plus

  onnx/manifest.json      the programs, their shapes, the decode settings
  onnx/search_RxL.onnx    the search for R rows of L source tokens: the encoder, then
                          the decoder steps as one ONNX Loop
  onnx/weights.bin        the programs' weights (ONNX external data), each array once

Each program takes (inputs [R, L] int32, alpha, max_len_a, max_len_b float32 scalars)
and returns (tokens [R, max_decode_len] int32, scores [R] float32): the best hypothesis
of the one-call search (`models.decoding.beam_search`, a `lax.while_loop`, which the
segmented search of inference/decoder.py equals). jax2onnx converts that loop into an
ONNX Loop whole, so nothing steps in Python: onnxruntime runs the search as XLA does,
TopK ties included (both take the lower index). The beam width is compiled in; the
max length is the bundle's `DecodeSettings.cache_length`, as for StableHLO.

After conversion, dense layers (einsums of an activation with a weight) become
MatMuls, and with `quantize='int8'` onnxruntime's `quantize_dynamic` stores those
MatMuls' weights as int8 (7-bit range, per output channel) and quantizes their inputs
per call; the output projection's transposed table is folded into a weight first so
that it is one of them. The embedding lookup stays float32. `runners/onnx.py` translates with
onnxruntime, numpy and sentencepiece alone.
"""
import dataclasses
import hashlib
from importlib import metadata
import json
import logging
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import bundle as bundle_lib
from inference import stablehlo
from models import decoding

DIRECTORY = "onnx"
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
SHAPES = stablehlo.SHAPES  # (rows, source tokens) compiled by default.
QUANTIZE = (None, "int8")
INPUTS = ("inputs", "alpha", "max_len_a", "max_len_b")
OUTPUTS = ("tokens", "scores")
_MIN_EXTERNAL_BYTES = 1024  # Smaller arrays stay inside each program, as given.
_ALIGN = 64  # Offset alignment of the arrays in weights.bin.


def _import():
  """(onnx, jax2onnx), with jax2onnx's plugin-import warnings quiet (its plugins for
  dm_pix fail to import under this jax; nothing here uses them)."""
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  logging.getLogger("onnx_ir").setLevel(logging.ERROR)
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Exporting to ONNX needs jax2onnx and onnxruntime:"
                      " pip install 'nmt-enfr[onnx]'.") from e
  return onnx, jax2onnx


def _search(loaded: bundle_lib.Bundle, beam_size: int, max_decode_len: int):
  """search(inputs, alpha, a, b) -> (best tokens, best scores), parameters closed over."""
  graphdef, params = loaded.model.graphdef, loaded.model.params

  def search(inputs, alpha, max_len_a, max_len_b):
    out = decoding.beam_search(graphdef, params, inputs, alpha, max_len_a, max_len_b,
                               eos_id=tokenizer_lib.EOS_ID, beam_size=beam_size,
                               max_decode_len=max_decode_len, nbest=1)
    return out.tokens[:, 0], out.scores[:, 0]  # [rows, max_decode_len], [rows]
  return search


def _convert(search, rows: int, length: int):
  """The ONNX ModelProto of `search` on [rows, length] inputs.

  jax traces it first and jax2onnx converts the primitives of that trace: tracing
  under jax2onnx would replace flax's Dropout call with one that takes no `rngs`,
  which our layers pass.
  """
  _, jax2onnx = _import()
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  specs = [jax.ShapeDtypeStruct((rows, length), jnp.int32), scalar, scalar, scalar]
  closed = jax.make_jaxpr(search)(*specs)

  def primitives(*args):
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)
  return jax2onnx.to_onnx(primitives, specs, model_name=f"search_{rows}x{length}",
                          input_names=list(INPUTS), output_names=list(OUTPUTS))


def _graphs(graph):
  """`graph` and every subgraph in it (a Loop's body), outermost first."""
  yield graph
  for node in graph.node:
    for attribute in node.attribute:
      if attribute.HasField("g"):
        yield from _graphs(attribute.g)


def _hoist_loop_invariants(model) -> None:
  """Loop-carried values a Loop's body passes on unchanged (jax2onnx carries every
  value the while body reads, the weights included) become reads of the value
  outside the loop: nothing is copied per step, and the body's weights are the
  graph's initializers, which the MatMul rewrite and quantization need."""
  for graph in list(_graphs(model.graph)):
    for loop in graph.node:
      if loop.op_type != "Loop":
        continue
      body = next(a.g for a in loop.attribute if a.name == "body")
      producer = {o: node for node in body.node for o in node.output}
      hoisted = {}  # body input index -> outer name
      for k in range(len(loop.input) - 2):
        name, out = body.input[2 + k].name, body.output[1 + k].name
        node = producer.get(out)
        if out == name or (node is not None and node.op_type == "Identity"
                           and node.input[0] == name):
          hoisted[k] = loop.input[2 + k]
      if not hoisted:
        continue
      # The body input and the Identity passing it on both read the outer value.
      renames = {body.output[1 + k].name: outer for k, outer in hoisted.items()}
      renames.update({body.input[2 + k].name: outer for k, outer in hoisted.items()})
      kept = [n for n in body.node if not (n.op_type == "Identity"
                                            and n.output[0] in renames)]
      del body.node[:]
      body.node.extend(kept)
      for inner in _graphs(body):
        for node in inner.node:
          node.input[:] = [renames.get(x, x) for x in node.input]
      after = {loop.output[k]: outer for k, outer in hoisted.items()}
      for node in graph.node:
        node.input[:] = [after.get(x, x) for x in node.input]
      if any(o.name in after for o in graph.output):
        raise ValueError("A loop-invariant value is a graph output.")
      for k in sorted(hoisted, reverse=True):
        del loop.input[2 + k]
        del body.input[2 + k]
        del body.output[1 + k]
        del loop.output[k]


def _fills(onnx, model) -> None:
  """Initializers of one repeated value (the zeroed KV cache, attention masks'
  fill values: jax2onnx folds such broadcasts into arrays) become ConstantOfShape
  nodes, so the files do not store them."""
  for graph in _graphs(model.graph):
    fills, kept = [], []
    for tensor in graph.initializer:
      array = onnx.numpy_helper.to_array(tensor)
      if array.nbytes >= _MIN_EXTERNAL_BYTES and (array == array.flat[0]).all():
        shape = f"{tensor.name}/shape"
        fills += [onnx.helper.make_node("Constant", [], [shape],
                                        value=onnx.numpy_helper.from_array(
                                            np.array(array.shape, np.int64))),
                  onnx.helper.make_node("ConstantOfShape", [shape], [tensor.name],
                                        value=onnx.numpy_helper.from_array(
                                            array.reshape(-1)[:1]))]
      else:
        kept.append(tensor)
    if fills:
      nodes = fills + list(graph.node)
      del graph.initializer[:], graph.node[:]
      graph.initializer.extend(kept)
      graph.node.extend(nodes)


def _matmul_nodes(onnx, node, weight, name):
  """Nodes computing the Einsum `node` of an activation and `weight` (an array
  named `name`) as a MatMul, with the weight laid out [contracted, free] as
  `name`.matmul; None if its equation is not x[P + C] . w[C + F] -> [P + F]."""
  equation = next(a.s for a in node.attribute if a.name == "equation").decode()
  if equation.count(",") != 1 or "->" not in equation or "." in equation:
    return None
  lhs, rest = equation.replace(" ", "").split(",")
  rhs, out = rest.split("->")
  contracted = "".join(c for c in lhs if c in rhs and c not in out)
  prefix, free = lhs[:len(lhs) - len(contracted)], rhs[len(contracted):]
  if (not contracted or not prefix or not free or lhs != prefix + contracted
      or rhs != contracted + free or out != prefix + free
      or len(set(lhs + rhs)) != len(prefix + contracted + free)):
    return None
  free_dims = [int(d) for d in weight.shape[len(contracted):]]
  matrix = (f"{name}.matmul", weight.reshape(math.prod(weight.shape[:len(contracted)]),
                                              math.prod(free_dims)))
  x, y, tag, nodes = node.input[0], node.output[0], node.output[0], []

  def reshape(source, target, shape):
    nodes.append(onnx.helper.make_node(
        "Constant", [], [f"{tag}/shape_{len(nodes)}"],
        value=onnx.numpy_helper.from_array(np.array(shape, np.int64))))
    nodes.append(onnx.helper.make_node("Reshape", [source, nodes[-1].output[0]],
                                       [target]))
  if len(contracted) > 1:  # x [P..., C...] -> [P..., prod(C)]
    reshape(x, f"{tag}/rows", [0] * len(prefix) + [-1])
    x = f"{tag}/rows"
  product = y if len(free) == 1 else f"{tag}/product"
  nodes.append(onnx.helper.make_node("MatMul", [x, matrix[0]], [product]))
  if len(free) > 1:  # [P..., prod(F)] -> [P..., F...]
    reshape(product, y, [0] * len(prefix) + free_dims)
  return nodes, matrix


def _to_matmuls(onnx, model, fold_transposes: bool) -> None:
  """Rewrites, in place, every Einsum of an activation with a main-graph weight as a
  MatMul (onnxruntime quantizes MatMuls, not Einsums); with `fold_transposes`, first
  replaces each Transpose of a weight by the transposed weight. Drops the weights
  (and, in every graph, the constants) nothing reads any more."""
  main = model.graph
  weights = {t.name: t for t in main.initializer}
  if fold_transposes:
    kept = []
    for node in main.node:
      if node.op_type == "Transpose" and node.input[0] in weights:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = onnx.numpy_helper.to_array(weights[node.input[0]]).transpose(perm)
        main.initializer.append(onnx.numpy_helper.from_array(array, node.output[0]))
        weights[node.output[0]] = main.initializer[-1]
      else:
        kept.append(node)
    del main.node[:]
    main.node.extend(kept)
  added = {}
  for graph in _graphs(main):
    nodes = []
    for node in graph.node:
      plan = None
      if (node.op_type == "Einsum" and len(node.input) == 2
          and node.input[1] in weights):
        plan = _matmul_nodes(onnx, node, onnx.numpy_helper.to_array(
            weights[node.input[1]]), node.input[1])
      if plan is None:
        nodes.append(node)
        continue
      new_nodes, (name, matrix) = plan
      nodes.extend(new_nodes)
      if name not in added:
        added[name] = onnx.numpy_helper.from_array(np.ascontiguousarray(matrix), name)
    del graph.node[:]
    graph.node.extend(nodes)
  main.initializer.extend(added.values())
  used = {name for graph in _graphs(main) for node in graph.node for name in node.input}
  used |= {output.name for graph in _graphs(main) for output in graph.output}
  for graph in _graphs(main):
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _quantize(onnx, model):
  """`model` with its MatMul weights int8, by onnxruntime's dynamic quantization."""
  from onnxruntime import quantization  # pylint: disable=import-outside-toplevel
  root = logging.getLogger()
  was_disabled, root.disabled = root.disabled, True
  try:  # It logs a recommendation to pre-process on the root logger.
    with tempfile.TemporaryDirectory() as scratch:
      path = os.path.join(scratch, "int8.onnx")
      # 7-bit weights (reduce_range): x86 CPUs without VNNI multiply uint8 by int8
      # in pairs that saturate int16; on test_2016_flickr, 8-bit weights lost 0.26
      # BLEU (beam 4) where 7-bit ones lost 0.04.
      quantization.quantize_dynamic(model, path, op_types_to_quantize=["MatMul"],
                                    per_channel=True, reduce_range=True,
                                    weight_type=quantization.QuantType.QInt8,
                                    extra_options={"EnableSubgraph": True})
      return onnx.load(path)
  finally:
    root.disabled = was_disabled


class _Weights:
  """weights.bin: the arrays of every program, each distinct one stored once."""

  def __init__(self):
    self.blob, self.offsets = bytearray(), {}

  def externalize(self, onnx, model) -> None:
    """Moves `model`'s larger initializers (every graph's) into the blob."""
    for graph in _graphs(model.graph):
      for tensor in graph.initializer:
        if not tensor.HasField("raw_data"):
          tensor.CopyFrom(onnx.numpy_helper.from_array(
              onnx.numpy_helper.to_array(tensor), tensor.name))
        data = tensor.raw_data
        if len(data) < _MIN_EXTERNAL_BYTES:
          continue
        key = hashlib.sha256(data).digest()
        if key not in self.offsets:
          self.blob.extend(b"\0" * (-len(self.blob) % _ALIGN))
          self.offsets[key] = len(self.blob)
          self.blob.extend(data)
        onnx.external_data_helper.set_external_data(
            tensor, WEIGHTS, offset=self.offsets[key], length=len(data))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")


def write_programs(staging: str, loaded: bundle_lib.Bundle, *, shapes=SHAPES,
                   quantize: str | None = None, beam_size: int | None = None) -> dict:
  """Converts the search of `loaded` for each (rows, length) into STAGING/onnx;
  returns the manifest. `beam_size` defaults to the bundle's decode setting."""
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize={quantize!r}: ONNX programs are float32 or int8.")
  onnx, _ = _import()
  settings = loaded.settings
  if beam_size is not None:
    settings = dataclasses.replace(settings, beam_size=beam_size)
  directory = os.path.join(staging, DIRECTORY)
  os.makedirs(directory, exist_ok=True)
  weights, programs = _Weights(), []
  for rows, length in shapes:
    max_decode_len = settings.cache_length(length, loaded.model.model_config.max_len)
    model = _convert(_search(loaded, settings.beam_size, max_decode_len), rows, length)
    _hoist_loop_invariants(model)
    _fills(onnx, model)
    _to_matmuls(onnx, model, fold_transposes=quantize is not None)
    if quantize:
      model = _quantize(onnx, model)
    weights.externalize(onnx, model)
    name = f"search_{rows}x{length}.onnx"
    with open(os.path.join(directory, name), "wb") as f:
      f.write(model.SerializeToString())
    programs.append({"rows": rows, "src_len": length,
                     "max_decode_len": max_decode_len, "file": name})
  with open(os.path.join(directory, WEIGHTS), "wb") as f:
    f.write(weights.blob)
  manifest = {
      "programs": programs, "weights": WEIGHTS, "quantize": quantize,
      "inputs": list(INPUTS), "outputs": list(OUTPUTS),
      "decode": dataclasses.asdict(settings),
      "eos_id": tokenizer_lib.EOS_ID, "pad_id": tokenizer_lib.PAD_ID,
      "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
      "versions": {p: metadata.version(p) for p in ("jax", "jax2onnx", "onnx",
                                                    "onnxruntime")},
  }
  with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def export_onnx(workdir: str, output: str, *, step: int | None = None,
                checkpoint_dir: str | None = None, quantize: str | None = None,
                beam_size: int | None = None, shapes=SHAPES) -> dict:
  """A float32 bundle of the workdir's checkpoint with its search as ONNX (int8
  MatMuls with `quantize='int8'`); returns bundle.json's content."""
  if quantize not in QUANTIZE:
    raise ValueError(f"--quantize={quantize!r}: ONNX programs are float32 or int8"
                     " (onnxruntime's dynamic quantization).")

  def add_programs(staging: str, bundle: bundle_lib.Bundle) -> None:
    write_programs(staging, bundle, shapes=shapes, quantize=quantize,
                   beam_size=beam_size)
  return bundle_lib.write_bundle(workdir, output, step=step,
                                 checkpoint_dir=checkpoint_dir, add_files=add_programs)
