"""Compiles the train step, eval step and beam search for a Cloud TPU topology, on CPU.

  python compile_tpu.py --config=configs/transformer_base.py --topology=v5e-16 \
      --mesh_shape=16,1,1

libtpu's compile-only devices stand in for the slice (no TPU needed, the [tpu] extra
is; `--topology=h100-8` compiles for eight H100s with the [cuda-compile] extra), the
programs are the ones training and serving run (training.state.build_program
and models.decoding.jit_beam_search, with their shardings and donation), and one JSON
line per program says whether it fits in HBM and what it costs (aot/report.py). An
out-of-memory program gets a line with `fits: false` and what to try; the exit status
is then 1. As MaxText's train_compile.py, this is the check to run before renting.
"""
import json
import os
import sys

# Compile-only: no accelerator backend is used, so none is initialised.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from aot import programs  # pylint: disable=wrong-import-position
from aot import report as report_lib  # pylint: disable=wrong-import-position
from aot import topology as topology_lib  # pylint: disable=wrong-import-position
from cli import logs  # pylint: disable=wrong-import-position
from parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from parallel.sharding import Partitioner  # pylint: disable=wrong-import-position

PROGRAMS = ("train_step", "eval_step", "beam_search")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU accelerator type (v5e-16, v5p-8, v4-8, v6e-8, ...),"
    " libtpu topology name (v5e:4x4), or h100 / h100-8 (one host of 1 or 8 GPUs).")
_MESH = flags.DEFINE_list("mesh_shape", None, "data,fsdp,tensor sizes (-1 fills);"
                          " default: the config's mesh_shape.")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), f"Some of {PROGRAMS}.")
_DECODE_BATCHES = flags.DEFINE_list("decode_batch_sizes", ["1", "8", "64", "256"],
                                    "Source sentences per beam-search call.")
_SRC_LEN = flags.DEFINE_integer("src_len", 32, "Source tokens per sentence (search).")
_DECODE_DTYPE = flags.DEFINE_string(
    "decode_dtype", None, "Serve parameters and compute in this dtype (e.g."
    " bfloat16); default: the config's model dtypes.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Vocabulary size; default:"
                              " config.data.vocab_size (what the tokenizer trains to).")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Write each compiled program's HLO"
                               " text here (PROGRAM.hlo.txt).")
flags.mark_flags_as_required(["config", "topology"])


def _lowered(config, vocab_size: int, partitioner: Partitioner, wanted):
  """Lowers the requested programs lazily, one at a time (compiles are long)."""
  if {"train_step", "eval_step"} & set(wanted):
    for lowered in programs.training_programs(config, vocab_size, partitioner):
      if lowered.name in wanted:
        yield lowered
  if "beam_search" in wanted:
    for batch in _DECODE_BATCHES.value:
      yield programs.beam_search(config, vocab_size, partitioner, batch=int(batch),
                                 src_len=_SRC_LEN.value, dtype=_DECODE_DTYPE.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if unknown := sorted(set(_PROGRAMS.value) - set(PROGRAMS)):
    raise app.UsageError(f"--programs: unknown {unknown}; choose from {PROGRAMS}.")
  try:
    devices = topology_lib.devices(_TOPOLOGY.value)
  except (ValueError, RuntimeError) as e:
    raise app.UsageError(str(e)) from e
  config = _CONFIG.value
  shape = tuple(int(s) for s in _MESH.value) if _MESH.value else config.mesh_shape
  try:
    mesh = mesh_lib.create_mesh(shape, devices)
  except ValueError as e:
    raise app.UsageError(f"--mesh_shape on {_TOPOLOGY.value} ({len(devices)}"
                         f" devices): {e}") from e
  partitioner = Partitioner(mesh, config.logical_axis_rules)
  vocab_size = _VOCAB.value or config.data.vocab_size
  config_name = os.path.basename(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  failed = False
  for lowered in _lowered(config, vocab_size, partitioner, _PROGRAMS.value):
    line = {"program": lowered.name, "topology": _TOPOLOGY.value,
            "mesh": dict(mesh.shape), **lowered.shape}
    try:
      line, compiled = report_lib.report(lowered, devices, _TOPOLOGY.value,
                                         dict(mesh.shape), "remat" in config.model)
    except report_lib.OutOfMemory as e:
      failed = True
      line.update(fits=False, error=str(e))
    else:
      if _HLO_DIR.value:
        os.makedirs(_HLO_DIR.value, exist_ok=True)
        suffix = f"_b{lowered.shape['batch']}" if lowered.name == "beam_search" else ""
        with open(os.path.join(_HLO_DIR.value, f"{lowered.name}{suffix}.hlo.txt"),
                  "w", encoding="utf-8") as f:
          f.write(compiled.as_text())
    print(json.dumps({"config": config_name,
                      "remat": bool(config.model.get("remat", False)), **line}),
          flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  logs.run(main)
