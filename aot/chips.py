"""Per-chip peaks of Cloud TPU generations (and the H100), for fit checks and roofline estimates.

Sources (Cloud TPU system-architecture pages, read 2026-12):
  v4   https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16; HBM2 32 GiB, 1200 GB/s.
       The page gives no ICI figure: 6 links x 90 GB/s bidirectional (45 GB/s each
       way) from "How to Scale Your Model", jax-ml.github.io/scaling-book/tpus.
  v5e  https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16; 16 GB, 819 GB/s;
       bidirectional ICI 400 GB/s per chip.
  v5p  https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16; 95 GiB, 2765 GB/s;
       bidirectional ICI 1200 GB/s per chip.
  v6e  https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16; 32 GB, 1600 GB/s;
       bidirectional ICI 800 GB/s per chip.
  H100 NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s dense bf16; 80 GB
       HBM3 (79.1 GiB as CUDA reports it), 3.35 TB/s; NVLink 900 GB/s per GPU
       (bidirectional, all links).
HBM capacities are taken as GiB (2**30 bytes) for every generation; the compiler's own
out-of-memory message states the exact usable bytes.
"""
import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  name: str
  hbm_bytes: int  # HBM per chip.
  peak_bf16_flops: float  # Dense bf16 matmul FLOP/s per chip.
  hbm_bytes_per_s: float
  ici_bytes_per_s: float  # Bidirectional inter-chip bandwidth per chip, all links.


# By `jax.Device.device_kind` of the compile-only devices.
CHIPS = {
    "TPU v4": ChipSpec("v4", 32 * GiB, 275e12, 1200e9, 6 * 90e9),
    "TPU v5 lite": ChipSpec("v5e", 16 * GiB, 197e12, 819e9, 400e9),
    "TPU v5": ChipSpec("v5p", 95 * GiB, 459e12, 2765e9, 1200e9),
    "TPU v6 lite": ChipSpec("v6e", 32 * GiB, 918e12, 1600e9, 800e9),
    "NVIDIA H100 80GB HBM3": ChipSpec("h100", 84929347584, 989e12, 3350e9, 900e9),
}


def chip_spec(device_kind: str) -> ChipSpec:
  """The spec of a device kind; ValueError naming the known kinds."""
  try:
    return CHIPS[device_kind]
  except KeyError:
    raise ValueError(f"No chip spec for device kind {device_kind!r}; known: "
                     f"{sorted(CHIPS)} (add it to aot/chips.py with its sources)."
                     ) from None
