"""Compile-only TPU devices for a named topology, from libtpu on any host (and
H100s from the CUDA plugin, aot/gpu.py).

Names are Cloud TPU accelerator types (`v5e-16`, as `gcloud --accelerator-type`
takes them) mapped as MaxText's accelerator_to_spec_map does; libtpu's own
`<generation>:<shape>` names (`v5e:4x4`) pass through unchanged. v4 and v5p use
megacore (one device per chip, its two TensorCores together), as a slice runs them.
"""
import dataclasses
import importlib.util
import os

from aot import gpu

INSTALL_HINT = ("libtpu, the TPU compiler, is not installed. Install the [tpu] extra"
                " at the pinned versions: .venv/bin/pip install -c"
                " requirements/lock.txt -e '.[tpu]'")


@dataclasses.dataclass(frozen=True)
class TopologySpec:
  topology_name: str  # libtpu's name, e.g. 'v5e:4x4'.
  chip_config_name: str | None = None  # 'megacore' for v4 / v5p.
  chips_per_host_bounds: tuple[int, int, int] | None = None  # None: libtpu's 2x2x1.

  def kwargs(self) -> dict:
    return {k: v for k, v in (("chip_config_name", self.chip_config_name),
                              ("chips_per_host_bounds", self.chips_per_host_bounds))
            if v is not None}


_ONE_CHIP, _EIGHT_CHIPS = (1, 1, 1), (2, 4, 1)  # v5e/v6e hosts with 1 or 8 chips.
TOPOLOGIES = {
    "v4-8": TopologySpec("v4:2x2x1", "megacore"),
    "v4-16": TopologySpec("v4:2x2x2", "megacore"),
    "v4-32": TopologySpec("v4:2x2x4", "megacore"),
    "v5p-8": TopologySpec("v5:2x2x1", "megacore"),
    "v5p-16": TopologySpec("v5:2x2x2", "megacore"),
    "v5p-32": TopologySpec("v5:2x2x4", "megacore"),
    "v5e-1": TopologySpec("v5e:1x1", chips_per_host_bounds=_ONE_CHIP),
    "v5e-4": TopologySpec("v5e:2x2"),
    "v5e-8": TopologySpec("v5e:2x4", chips_per_host_bounds=_EIGHT_CHIPS),
    "v5e-16": TopologySpec("v5e:4x4"),
    "v5e-32": TopologySpec("v5e:4x8"),
    "v5e-64": TopologySpec("v5e:8x8"),
    "v5e-256": TopologySpec("v5e:16x16"),
    "v6e-1": TopologySpec("v6e:1x1", chips_per_host_bounds=_ONE_CHIP),
    "v6e-4": TopologySpec("v6e:2x2"),
    "v6e-8": TopologySpec("v6e:2x4", chips_per_host_bounds=_EIGHT_CHIPS),
    "v6e-16": TopologySpec("v6e:4x4"),
    "v6e-32": TopologySpec("v6e:4x8"),
    "v6e-256": TopologySpec("v6e:16x16"),
}


def _unknown(name: str) -> ValueError:
  return ValueError(
      f"--topology={name!r} is not a TPU topology. Use an accelerator type, one of "
      f"{', '.join(TOPOLOGIES)}, or libtpu's <generation>:<shape> form such as "
      "v5e:4x4, v6e:2x4, v5:2x2x1 (v5p) or v4:2x2x1; or a GPU: "
      f"{', '.join(gpu.TOPOLOGIES)}.")


def resolve(name: str) -> TopologySpec:
  """The spec of an accelerator type or a libtpu topology name; errors list names."""
  if name in TOPOLOGIES:
    return TOPOLOGIES[name]
  generation, sep, shape = name.partition(":")
  if not sep or not shape or not all(p.isdigit() for p in shape.split("x")):
    raise _unknown(name)
  megacore = "megacore" if generation in ("v4", "v5", "v5p") else None
  return TopologySpec(name, megacore)


def prepare_environment() -> None:
  """Lets libtpu load on a host that is no TPU VM, beside other libtpu users.

  libtpu holds /tmp/libtpu_lockfile while loaded (any JAX process that found it
  tries the TPU backend); a compile-only process does not use a TPU, so it may load
  it beside them. The metadata-server query is for TPU VMs only.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def libtpu_installed() -> bool:
  return (importlib.util.find_spec("libtpu") is not None
          or bool(os.environ.get("TPU_LIBRARY_PATH")))


def devices(name: str) -> list:
  """The compile-only devices of topology `name` (an accelerator type, a libtpu
  name or a GPU of aot/gpu.py).

  RuntimeError with the install command when libtpu (or the CUDA plugin) is missing;
  ValueError listing valid names for an unknown topology.
  """
  if name in gpu.TOPOLOGIES:
    return gpu.devices(name)
  spec = resolve(name)
  if not libtpu_installed():
    raise RuntimeError(INSTALL_HINT)
  prepare_environment()
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=spec.topology_name, **spec.kwargs()).devices)
  except jax.errors.JaxRuntimeError as e:
    if "INVALID_ARGUMENT" in str(e) or "Invalid TPU" in str(e):
      raise _unknown(name) from e
    raise
