"""The device mesh ('data', 'fsdp', 'tensor') and multi-host initialisation."""
import math
import os
from collections.abc import Sequence

import jax

MESH_AXES = ("data", "fsdp", "tensor")

# Environment variables that mean "several processes form one job": there JAX's
# auto-detection (TPU pods, Slurm, Open MPI, ...) fills in the coordinator and ranks.
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a -1 entry by the devices left over; errors name the config field."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES) or shape.count(-1) > 1 or any(
      s == 0 or s < -1 for s in shape):
    raise ValueError(
        f"mesh_shape={shape}: need {len(MESH_AXES)} positive sizes for "
        f"{MESH_AXES}, at most one of them -1 (fill with the remaining devices).")
  fixed = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % fixed:
      raise ValueError(
          f"mesh_shape={shape}: the fixed sizes multiply to {fixed}, which does not "
          f"divide the {num_devices} devices; change mesh_shape.")
    return tuple(num_devices // fixed if s == -1 else s for s in shape)
  if fixed != num_devices:
    raise ValueError(
        f"mesh_shape={shape} needs {fixed} devices but {num_devices} are available; "
        "change mesh_shape or set one entry to -1.")
  return shape


def create_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices).

  Axis types are Auto, not the Explicit default of `jax.make_mesh`: the model shards
  through logical-axis rules, i.e. `with_sharding_constraint` hints that GSPMD
  propagates, which is the Auto-mode contract.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _in_multiprocess_cluster() -> bool:
  for name in _CLUSTER_ENV:
    value = os.environ.get(name, "")
    if name == "TPU_WORKER_HOSTNAMES":
      if "," in value:  # One hostname per TPU VM: a pod slice has several.
        return True
    elif name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
      if value.isdigit() and int(value) > 1:
        return True
    elif value:
      return True
  return False


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins the processes of a multi-host job into one JAX runtime; call before any jax op.

  Explicit arguments (e.g. from --coordinator_address flags) win; otherwise JAX
  auto-detects TPU pods and Slurm/MPI jobs. A single-process run is left alone.
  Returns whether `jax.distributed` is initialized afterwards.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if any(a is not None for a in explicit):
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _in_multiprocess_cluster():
    jax.distributed.initialize()
  else:
    return False
  return True
