"""The device mesh ('data', 'fsdp', 'tensor') and multi-host initialisation."""
import glob
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


# A Cloud TPU VM describes its slice's workers in the GCE metadata server, not in the
# environment. A TPU chip on the PCI bus is how JAX itself tells it is on one: vendor
# Google, with a TPU's device id (v3, v4, v5p, v5e, v6e, TPU7x: the table of
# jax/_src/hardware_utils.py). Google's other devices, e.g. the gVNIC network card
# (0x0042) of any GCE VM, are not TPUs.
PCI_DEVICES = "/sys/bus/pci/devices"
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _read_id(path: str) -> str:
  try:
    with open(path, encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def _on_cloud_tpu_vm() -> bool:
  """Whether a TPU chip is attached and this process may use it (JAX_PLATFORMS allows
  it; TPU_SKIP_MDS_QUERY, JAX's own switch, says there is no metadata server)."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if (platforms and "tpu" not in platforms.split(",")) or os.environ.get(
      "TPU_SKIP_MDS_QUERY") is not None:
    return False
  return any(_read_id(os.path.join(d, "vendor")) == _GOOGLE_PCI_VENDOR
             and _read_id(os.path.join(d, "device")) in _TPU_PCI_DEVICE_IDS
             for d in glob.glob(os.path.join(PCI_DEVICES, "*")))


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


# Seconds `jax.distributed.initialize` waits for the coordinator before failing.
DEFAULT_DISTRIBUTED_TIMEOUT_S = 300
TIMEOUT_ENV = "NMT_DISTRIBUTED_TIMEOUT_S"
_COMMAND_FORM = ("python train.py ... --coordinator_address=HOST:PORT"
                 " --num_processes=N --process_id=I  (one process per host, I ="
                 " 0..N-1; HOST:PORT is where process 0 listens)")


def _distributed_timeout_s() -> int:
  value = os.environ.get(TIMEOUT_ENV, "")
  if not value:
    return DEFAULT_DISTRIBUTED_TIMEOUT_S
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds <= 0:
    raise ValueError(f"{TIMEOUT_ENV}={value!r}: need a positive whole number of"
                     " seconds to wait for the coordinator.")
  return seconds


def _check_explicit(coordinator_address, num_processes, process_id) -> None:
  """ValueError naming the missing or bad flag of a multi-process start."""
  problem = None
  if num_processes is not None and num_processes > 1:
    if not coordinator_address:
      problem = (f"--num_processes={num_processes} needs --coordinator_address"
                 " (host:port of process 0)")
    elif process_id is None:
      problem = (f"--num_processes={num_processes} needs --process_id (this"
                 f" process's index, 0..{num_processes - 1})")
    elif not 0 <= process_id < num_processes:
      problem = (f"--process_id={process_id} is outside 0..{num_processes - 1}"
                 f" for --num_processes={num_processes}")
  if problem:
    raise ValueError(f"{problem}. Start each process as: {_COMMAND_FORM}")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins the processes of a multi-host job into one JAX runtime; call before any jax op.

  Explicit arguments (e.g. from --coordinator_address flags) win; otherwise JAX
  auto-detects Cloud TPU VMs and slices, GKE, and Slurm/MPI jobs (on a one-host TPU
  VM that is a job of one process). Any other single-process run is left alone.
  Missing flags of a multi-process start raise ValueError before jax is called; the
  coordinator is waited for at most $NMT_DISTRIBUTED_TIMEOUT_S seconds (default
  300), after which a RuntimeError names its address.
  Returns whether `jax.distributed` is initialized afterwards.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if any(a is not None for a in explicit):
    _check_explicit(coordinator_address, num_processes, process_id)
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  elif _in_multiprocess_cluster() or _on_cloud_tpu_vm():
    kwargs = {}  # JAX detects the rest (on a TPU VM, from the metadata server).
  else:
    return False
  timeout = _distributed_timeout_s()
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout)
  except RuntimeError as e:
    where = coordinator_address or "the auto-detected coordinator"
    raise RuntimeError(
        f"Could not join the multi-process run at coordinator {where} within"
        f" {timeout} s ({TIMEOUT_ENV} sets the wait): {e}. Check that process 0 is"
        " running and that the address is reachable from this host.") from e
  return True
