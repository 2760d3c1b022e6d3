"""Compile-only CUDA devices: an H100 described to XLA's deviceless GPU compiler.

The CUDA plugin of the pinned jax compiles for a GPU it is told about: with
`JAX_PLATFORMS=cpu` it registers without looking for a driver, and
`get_topology_desc(platform="cuda", target_config=...)` takes a `GpuTargetConfig`
(xla/stream_executor/device_description.proto) in text form instead of querying a
card (openxla/xla#16913). No NVIDIA library is needed, so the plugin is installed
without its dependencies (INSTALL_HINT), not through the `[cuda12]` extra.
"""
import importlib.util

INSTALL_HINT = (
    "The CUDA plugin, the GPU compiler, is not installed. For compile-only use it"
    " needs no NVIDIA libraries: .venv/bin/pip install --no-deps -c"
    " requirements/lock.txt jax-cuda12-plugin jax-cuda12-pjrt")

# H100 SXM5 80 GB (NVIDIA H100 datasheet; CUDA's device query as in
# jax-ml/jax#28376): 132 SMs at 1.98 GHz boost, 50 MiB L2, 3.35 TB/s HBM3, compute
# capability 9.0. XLA's cost model reads these; memory_analysis() does not need them.
H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

# Name -> XLA's "slices x hosts x devices per host". One host only: the roofline
# prices collectives at NVLink's bandwidth, which a second host's network is not.
TOPOLOGIES = {"h100": "1x1x1", "h100-8": "1x1x8"}


def plugin_installed() -> bool:
  return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


def devices(name: str) -> list:
  """The compile-only H100s of topology `name` (a key of TOPOLOGIES).

  RuntimeError with the install command when the CUDA plugin is missing.
  """
  if not plugin_installed():
    raise RuntimeError(INSTALL_HINT)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return list(topologies.get_topology_desc(
      platform="cuda", target_config=H100_SXM, topology=TOPOLOGIES[name]).devices)
