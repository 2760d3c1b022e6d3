"""Compiles a lowered program and reports it: memory against HBM, FLOPs, bytes,
collectives, a roofline step time and the MFU it implies.

Roofline: the step takes at least the longest of FLOPs / bf16 peak, HBM bytes / HBM
bandwidth and collective bytes / ICI bandwidth (aot/chips.py), per chip; the MFU is
the model FLOPs per chip over peak times that time. XLA's own `optimal_seconds` is
not used: for these programs it came out negative. For a program with a while loop
(the beam search), XLA's cost analysis counts the loop body once, so its FLOPs and
bytes are those of the setup plus one iteration.
"""
import re
import time

import jax

from aot import chips as chips_lib
from aot import hlo
from aot.programs import Lowered

GiB = chips_lib.GiB
# libtpu 0.0.42.1's message: "Ran out of memory on HBM, the total memory required for
# HLO temporaries (194.17G) exceeds available HBM (15.75G)."
_REQUIRED = re.compile(r"required for ([\w ]+?) \(([\d.]+)\s*([KMGT]?)i?B?\) exceeds"
                       r" available HBM \(([\d.]+)\s*([KMGT]?)i?B?\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class OutOfMemory(Exception):
  """The TPU compiler found that the program does not fit in HBM."""


def oom_advice(message: str, program: str, remat: bool) -> str:
  """The compiler's out-of-memory message as how much over, and what to try."""
  required = _REQUIRED.search(message)
  if required:
    what, need, need_unit, have, have_unit = required.groups()
    need, have = (float(n) * _UNITS[u] / GiB for n, u in ((need, need_unit),
                                                          (have, have_unit)))
    how_much = (f"needs {need:.2f} GiB of the {have:.2f} GiB of HBM per chip for"
                f" {what}, over by {need - have:.2f} GiB")
  else:  # Another wording: pass the compiler's first line on.
    how_much = "does not fit in HBM (" + message.strip().splitlines()[0] + ")"
  tries = ["shard parameters and optimizer state over more chips (--mesh_shape with"
           " fsdp > 1)", "a smaller global batch (--config.batch_tokens)",
           "bf16 compute (--config.model.dtype=bfloat16)"]
  if remat:
    tries.append("rematerialise each layer (--config.model.remat=True)")
  return (f"{program} {how_much}. Try: {'; '.join(tries)}; for the search, a"
          " smaller batch or beam.")


def _compile(lowered: Lowered, remat: bool):
  start = time.perf_counter()
  try:
    compiled = lowered.lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      raise OutOfMemory(oom_advice(str(e), lowered.name, remat)) from e
    raise
  return compiled, time.perf_counter() - start


def memory(compiled, spec: chips_lib.ChipSpec) -> dict:
  """Per-chip bytes by kind; peak = arguments + outputs - aliased + temporaries +
  code."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"arguments_gib": m.argument_size_in_bytes / GiB,
          "outputs_gib": m.output_size_in_bytes / GiB,
          "aliased_gib": m.alias_size_in_bytes / GiB,
          "temporaries_gib": m.temp_size_in_bytes / GiB,
          "code_gib": m.generated_code_size_in_bytes / GiB,
          "peak_gib": peak / GiB, "hbm_gib": spec.hbm_bytes / GiB,
          "fits": peak <= spec.hbm_bytes}


def roofline(flops: float | None, hbm_bytes: float | None, ici_bytes: float,
             spec: chips_lib.ChipSpec, model_flops_per_chip: float | None) -> dict:
  """Bound times and the step; FLOPs or bytes that XLA did not count (None: its GPU
  compiler gives no cost analysis) leave their bound out, and with no FLOPs at all
  there is no step time."""
  times = {"compute_s": flops / spec.peak_bf16_flops if flops is not None else None,
           "hbm_s": hbm_bytes / spec.hbm_bytes_per_s if hbm_bytes is not None else None,
           "ici_s": ici_bytes / spec.ici_bytes_per_s}
  if flops is None:
    return {**times, "step_s": None, "bound_by": None, "mfu": None}
  times = {k: v for k, v in times.items() if v is not None}
  step = max(times.values())
  bound = max(times, key=times.get).removesuffix("_s")
  mfu = (model_flops_per_chip / (spec.peak_bf16_flops * step)
         if model_flops_per_chip and step > 0 else None)
  return {**times, "step_s": step, "bound_by": bound, "mfu": mfu}


def report(lowered: Lowered, devices: list, topology: str, mesh_shape: dict,
           remat: bool = False):
  """(JSON-able report, compiled) of `lowered`; OutOfMemory if it does not fit.

  `remat`: whether the config can rematerialise, for the out-of-memory advice.
  """
  spec = chips_lib.chip_spec(devices[0].device_kind)
  compiled, seconds = _compile(lowered, remat)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # GPU: None.
  module = hlo.Module.parse(compiled.as_text())
  found = hlo.collectives(module, len(devices))
  summary = hlo.summarize_collectives(found)
  copies, moved = hlo.loop_copies(module)
  ici = sum(r["ici_bytes"] for r in summary["per_step"].values())
  chips = len(devices)
  model_flops = (lowered.model_flops / chips if lowered.model_flops else None)
  return {
      "program": lowered.name, "topology": topology, "chip": spec.name, "chips": chips,
      "hosts": len({d.process_index for d in devices}), "mesh": mesh_shape,
      **lowered.shape, **lowered.extra,
      "memory": memory(compiled, spec),
      "xla_flops_per_chip": cost.get("flops"),
      "xla_bytes_per_chip": cost.get("bytes accessed"),
      "model_flops_per_chip": model_flops,
      "collectives": summary,
      "roofline": roofline(cost.get("flops"), cost.get("bytes accessed"), ici, spec,
                           model_flops),
      "dots_by_operand_dtype": hlo.dot_operand_dtypes(module),
      "host_transfers": hlo.host_transfers(module),
      "loop_copies": copies[:5],
      "loop_memory_space_bytes": moved,
      "compile_s": seconds,
  }, compiled
