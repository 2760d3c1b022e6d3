"""Mesh creation, the logical-axis rules, and a sharded model on 8 fake CPU devices."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from data.tokenizer import PAD_ID
from models import TransformerConfig
from parallel import mesh as mesh_lib
from parallel import sharding
from parallel.sharding import Partitioner

CFG = TransformerConfig(vocab_size=64, pad_id=PAD_ID, emb_dim=32, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=2, qkv_dim=32, mlp_dim=64, max_len=64)


def spec_of(array) -> tuple:
  """An array's PartitionSpec as a tuple with one entry per dimension."""
  spec = tuple(array.sharding.spec)
  return spec + (None,) * (array.ndim - len(spec))


def test_create_mesh_fills_minus_one():
  assert jax.device_count() == 8
  mesh = mesh_lib.create_mesh((-1, 2, 1))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert tuple(mesh_lib.create_mesh((2, -1, 2)).shape.values()) == (2, 2, 2)
  assert mesh_lib.create_mesh((1, 1, -1), devices=jax.devices()[:2]).size == 2


@pytest.mark.parametrize("shape",
                         [(3, -1, 1), (2, 2, 1), (-1, -1, 1), (8, 1), (0, -1, 1)])
def test_bad_mesh_shape_names_the_field(shape):
  with pytest.raises(ValueError, match="mesh_shape"):
    mesh_lib.create_mesh(shape)


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for name in mesh_lib._CLUSTER_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv("NMT_DISTRIBUTED_TIMEOUT_S", raising=False)
  timeout = dict(initialization_timeout=mesh_lib.DEFAULT_DISTRIBUTED_TIMEOUT_S)
  assert not mesh_lib.initialize_distributed() and calls == []
  monkeypatch.setenv("SLURM_NTASKS", "1")  # One task: still a single process.
  assert not mesh_lib.initialize_distributed() and calls == []
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert mesh_lib.initialize_distributed() and calls == [timeout]
  mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 1)
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=2,
                           process_id=1, **timeout)


def test_rules_resolution():
  mesh = mesh_lib.create_mesh((4, 2, 1))
  rules = sharding.DEFAULT_RULES
  # Parameters: model width over 'fsdp', heads/mlp/vocab over 'tensor'.
  assert sharding.logical_to_spec(("vocab", "embed"), rules) == P("tensor", "fsdp")
  assert sharding.logical_to_spec(("embed", "heads", "kv"), rules) == P(
      "fsdp", "tensor", None)
  # Activations: 'batch' takes 'fsdp' first, so 'embed' stays whole.
  assert sharding.logical_to_spec(("batch", "length", "embed"), rules) == P(
      ("data", "fsdp"), None, None)
  # A batch of 4 cannot split 8 ways: it falls back to 'data' alone.
  assert sharding.logical_to_spec(("batch", "length"), rules, (4, 5), mesh) == P(
      "data", None)
  # Rules read back from a JSON config (lists, not tuples) work the same.
  from_json = json.loads(json.dumps(rules))
  assert sharding.logical_to_spec(("batch", "embed"), from_json) == P(("data", "fsdp"),
                                                                      None)
  assert Partitioner(mesh).batch_sharding().spec == P(("data", "fsdp"), None)


def test_activation_constraint():
  x = jnp.ones((8, 4, 32))
  # Outside a mesh: nothing to do.
  assert sharding.with_logical_constraint(x, ("batch", "length", "embed")) is x
  constrain = jax.jit(lambda x: sharding.with_logical_constraint(x, ("batch", "length",
                                                                     "mlp")))
  with Partitioner(mesh_lib.create_mesh((2, 2, 2))).activate():
    assert spec_of(constrain(x)) == (("data", "fsdp"), None, "tensor")
  # Other rules, the same model code: the partitioner's table is the one applied.
  rules = (("batch", "tensor"), ("mlp", "data"))
  constrain_under = Partitioner(mesh_lib.create_mesh((2, 2, 2)), rules).jit(
      lambda x: sharding.with_logical_constraint(x, ("batch", "length", "mlp")))
  assert spec_of(constrain_under(x)) == ("tensor", None, "data")


_MODELS = {}


def sharded_model(mesh_shape) -> tuple[Partitioner, nnx.GraphDef, nnx.State]:
  """The tiny model initialised straight onto a mesh; built once per mesh shape."""
  if mesh_shape not in _MODELS:
    partitioner = Partitioner(mesh_lib.create_mesh(mesh_shape))
    _MODELS[mesh_shape] = (partitioner,
                           *partitioner.init_params(CFG.make_model()))
  return _MODELS[mesh_shape]


@pytest.mark.parametrize("mesh_shape", [(4, 2, 1), (2, 2, 2)])
def test_param_shardings_follow_rules(mesh_shape):
  partitioner, _, state = sharded_model(mesh_shape)
  mesh = partitioner.mesh
  expected = {  # Written out from DEFAULT_RULES.
      ("embed", "embedding"): ("tensor", "fsdp"),
      ("encoder_layers", 0, "attn", "query", "kernel"): ("fsdp", "tensor", None),
      ("encoder_layers", 0, "attn", "query", "bias"): ("tensor", None),
      ("encoder_layers", 0, "attn", "out", "kernel"): ("tensor", None, "fsdp"),
      ("decoder_layers", 1, "cross_attn", "value", "kernel"): ("fsdp", "tensor", None),
      ("decoder_layers", 1, "mlp", "wi", "kernel"): ("fsdp", "tensor"),
      ("decoder_layers", 1, "mlp", "wi", "bias"): ("tensor",),
      ("decoder_layers", 1, "mlp", "wo", "kernel"): ("tensor", "fsdp"),
      ("decoder_norm", "scale"): ("fsdp",),
  }
  params = dict(nnx.to_flat_state(state))
  for path, spec in expected.items():
    array = params[path].get_value()
    assert spec_of(array) == spec, path
    assert array.sharding.mesh.shape == mesh.shape
  # Every parameter is sharded as its own logical names say.
  for path, var in params.items():
    names = var.get_metadata()["out_sharding"]
    want = partitioner.spec(names, var.get_value().shape)
    want = tuple(want) + (None,) * (len(names) - len(want))
    assert spec_of(var.get_value()) == want, path
  # Shards really are split: the embedding is [64/tensor, 32/fsdp] per device.
  shard = params[("embed", "embedding")].get_value().addressable_shards[0]
  assert shard.data.shape == (64 // mesh.shape["tensor"], 32 // mesh.shape["fsdp"])


def test_sharded_forward_matches_single_device():
  partitioner, graphdef, state = sharded_model((2, 2, 2))
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, 64, (8, 7)).astype(np.int32)
  targets = rng.randint(2, 64, (8, 5)).astype(np.int32)
  forward = jax.jit(lambda state, x, y: nnx.merge(graphdef, state)(x, y))
  expected = forward(jax.device_get(state), inputs, targets)  # Same weights, one device.

  data = partitioner.batch_sharding()
  with partitioner.activate():
    logits = forward(state, jax.device_put(inputs, data), jax.device_put(targets, data))
  # The logits constraint ('batch', 'length', 'vocab') held inside the program.
  assert spec_of(logits) == (("data", "fsdp"), None, "tensor")
  # fp32; tensor-parallel partial sums are added in another order: 1e-5.
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def _capture_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.delenv("NMT_DISTRIBUTED_TIMEOUT_S", raising=False)
  return calls


@pytest.mark.parametrize("args, missing", [
    ((None, 2, 0), "--coordinator_address"),
    (("10.0.0.1:1234", 2, None), "--process_id"),
    ((None, 4, None), "--coordinator_address"),
])
def test_initialize_distributed_names_the_missing_flag(monkeypatch, args, missing):
  calls = _capture_initialize(monkeypatch)
  with pytest.raises(ValueError, match=missing) as info:
    mesh_lib.initialize_distributed(*args)
  # The message shows the command line form of a multi-process start.
  assert "--coordinator_address=" in str(info.value)
  assert "--num_processes=" in str(info.value)
  assert "--process_id=" in str(info.value)
  assert calls == []  # Refused before jax is called.


def test_initialize_distributed_rejects_a_process_id_out_of_range(monkeypatch):
  calls = _capture_initialize(monkeypatch)
  with pytest.raises(ValueError, match="--process_id"):
    mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 2)
  assert calls == []


def test_initialize_distributed_passes_a_bounded_timeout(monkeypatch):
  calls = _capture_initialize(monkeypatch)
  mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 1)
  assert calls[-1]["initialization_timeout"] == 300
  monkeypatch.setenv("NMT_DISTRIBUTED_TIMEOUT_S", "45")
  mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 0)
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=2,
                           process_id=0, initialization_timeout=45)
  monkeypatch.setenv("NMT_DISTRIBUTED_TIMEOUT_S", "soon")
  with pytest.raises(ValueError, match="NMT_DISTRIBUTED_TIMEOUT_S"):
    mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 0)


def test_initialize_distributed_failure_names_the_coordinator(monkeypatch):
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("NMT_DISTRIBUTED_TIMEOUT_S", "7")

  def unreachable(**kw):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")

  monkeypatch.setattr(jax.distributed, "initialize", unreachable)
  with pytest.raises(RuntimeError, match=r"10\.0\.0\.9:1234.*7 s"):
    mesh_lib.initialize_distributed("10.0.0.9:1234", 2, 1)


def test_a_cloud_tpu_vm_joins_its_slice_without_flags(monkeypatch, tmp_path):
  """`gcloud compute tpus tpu-vm create` describes the workers in the metadata server,
  not in the environment: a TPU on the PCI bus is the sign, as JAX's own check."""
  calls = _capture_initialize(monkeypatch)
  for name in mesh_lib._CLUSTER_ENV + ("TPU_SKIP_MDS_QUERY",):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(mesh_lib, "PCI_DEVICES", str(tmp_path))

  def pci_device(slot, vendor, device):
    (tmp_path / slot).mkdir()
    (tmp_path / slot / "vendor").write_text(vendor + "\n")
    (tmp_path / slot / "device").write_text(device + "\n")

  pci_device("0000:00:03.0", "0x8086", "0x1237")  # Intel host bridge.
  pci_device("0000:00:04.0", "0x1ae0", "0x0042")  # Google's gVNIC: any GCE VM.
  monkeypatch.setenv("JAX_PLATFORMS", "")
  assert not mesh_lib.initialize_distributed() and calls == []
  pci_device("0000:00:05.0", "0x1ae0", "0x0063")  # A TPU v5e chip.
  assert mesh_lib.initialize_distributed() and calls == [
      dict(initialization_timeout=mesh_lib.DEFAULT_DISTRIBUTED_TIMEOUT_S)]
  # A helper process kept off the TPU (JAX_PLATFORMS=cpu) is a run of its own.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not mesh_lib.initialize_distributed() and len(calls) == 1
