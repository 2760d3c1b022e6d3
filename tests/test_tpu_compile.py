"""Compile-only TPU checks (aot/, compile_tpu.py): HLO parsing, topology names, and
the smoke config's train step and beam search compiled for v5e-4 and v5e-16 (4 hosts),
and for eight H100s.

The compiling tests need libtpu (the [tpu] extra) or the CUDA plugin (the
[cuda-compile] extra) and are skipped without them.
"""
import subprocess
import sys

from flax import nnx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from aot import gpu
from aot import hlo
from aot import report as report_lib
from aot import table as table_lib
from aot import topology as topology_lib
from configs import smoke

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(
    not topology_lib.libtpu_installed(),
    reason="libtpu is not installed: pip install -c requirements/lock.txt -e '.[tpu]'")
needs_cuda_plugin = pytest.mark.skipif(
    not gpu.plugin_installed(), reason="the CUDA plugin is not installed: pip install"
    " -c requirements/lock.txt -e '.[cuda-compile]'")

# The shapes of XLA:TPU's compiled text (libtpu 0.0.42.1): a reduce-scatter as an
# all-reduce inside an `all-reduce-scatter` fusion, an all-gather with mesh-form
# replica groups, a while body with a collective-permute, a copy and a host callback.
MODULE = """\
HloModule jit_step, entry_computation_layout={()->()}

%all-reduce-scatter.1 (input_0: f32[64,32], input_1: f32[16]) -> (f32[32,32], f32[8]) {
  %input_0 = f32[64,32]{1,0} parameter(0)
  %input_1 = f32[16]{0} parameter(1)
  %all-reduce.7 = (f32[64,32]{1,0:T(8,128)}, f32[16]{0}) all-reduce(%input_0, %input_1), channel_id=3, replica_groups=[2,2]<=[4], to_apply=%add
  ROOT %tuple.2 = (f32[32,32]{1,0}, f32[8]{0}) tuple(%all-reduce.7, %all-reduce.7)
}

%body.3 (p.1: (s32[], bf16[4,1024,256])) -> (s32[], bf16[4,1024,256]) {
  %p.1 = (s32[], bf16[4,1024,256]{2,1,0}) parameter(0)
  %gte.1 = bf16[4,1024,256]{2,1,0} get-tuple-element(%p.1), index=1
  %copy.9 = bf16[4,1024,256]{2,1,0} copy(%gte.1)
  %copy-start.2 = (bf16[4,1024,256]{2,1,0:S(1)}, bf16[4,1024,256]{2,1,0}, u32[]{:S(2)}) copy-start(%gte.1)
  %collective-permute.2 = bf16[4,1024,256]{2,1,0} collective-permute(%copy.9), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %custom-call.4 = () custom-call(%gte.1), custom_call_target="xla_python_cpu_callback"
  ROOT %t = (s32[], bf16[4,1024,256]{2,1,0}) tuple(%gte.1, %collective-permute.2)
}

ENTRY %main.1 (param.1: bf16[16,64], param.2: f32[64,32], param.3: f32[16]) -> f32[] {
  %param.1 = bf16[16,64]{1,0:T(8,128)(2,1)} parameter(0)
  %param.2 = f32[64,32]{1,0} parameter(1)
  %param.3 = f32[16]{0} parameter(2)
  %all-gather.5 = bf16[32,64]{1,0:T(8,128)(2,1)} all-gather(%param.1), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}, dimensions={0}
  %fusion.8 = (f32[32,32]{1,0}, f32[8]{0}) fusion(%param.2, %param.3), kind=kCustom, calls=%all-reduce-scatter.1
  %all-reduce.2 = f32[16]{0:T(128)} all-reduce(%param.3), channel_id=2, replica_groups={{0,1,2,3}}, to_apply=%add
  %while.1 = (s32[], bf16[4,1024,256]{2,1,0}) while(%tuple.0), condition=%cond.1, body=%body.3
  %dot.4 = f32[32,32]{1,0} dot(%all-gather.5, %param.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %r = f32[] constant(0)
}
"""


def test_collectives_take_bytes_from_shapes_and_groups_from_replica_groups():
  module = hlo.Module.parse(MODULE)
  found = {c.name: c for c in hlo.collectives(module, num_devices=4)}
  gather = found["all-gather.5"]
  assert (gather.kind, gather.group, gather.operand_bytes, gather.result_bytes) == (
      "all-gather", 2, 16 * 64 * 2, 32 * 64 * 2)
  scatter = found["all-reduce.7"]  # Two operands, one fused reduce-scatter.
  assert (scatter.kind, scatter.group) == ("reduce-scatter", 2)
  assert scatter.operand_bytes == (64 * 32 + 16) * 4
  assert scatter.result_bytes == (32 * 32 + 8) * 4
  assert found["all-reduce.2"].group == 4 and not found["all-reduce.2"].in_loop
  permute = found["collective-permute.2"]
  assert permute.in_loop and permute.operand_bytes == 4 * 1024 * 256 * 2
  summary = hlo.summarize_collectives(found.values())
  # A ring all-reduce over 4 devices sends 2 * 3/4 of its 64 bytes from each.
  assert summary["per_step"]["all-reduce"] == {"count": 1, "bytes": 64, "ici_bytes": 96}
  assert summary["per_loop_iteration"]["collective-permute"]["count"] == 1
  # A bandwidth-optimal all-gather over 2 devices sends half of its result.
  assert summary["per_step"]["all-gather"]["ici_bytes"] == 32 * 64


def test_loop_copies_host_calls_and_dot_dtypes_are_found():
  module = hlo.Module.parse(MODULE)
  assert module.in_loop == {"body.3", "cond.1"}  # Both run once per iteration.
  copies, moved = hlo.loop_copies(module)
  assert [(c["name"], c["bytes"]) for c in copies] == [("copy.9", 4 * 1024 * 256 * 2)]
  assert moved == 4 * 1024 * 256 * 2  # The copy-start into memory space 1.
  calls = hlo.host_transfers(module)
  assert [(c["target"], c["in_loop"]) for c in calls] == [
      ("xla_python_cpu_callback", True)]
  assert hlo.dot_operand_dtypes(module) == {"bf16+f32": 1}


def test_unknown_topology_lists_the_valid_names():
  with pytest.raises(ValueError, match=r"v5e-16.*v5e:4x4"):
    topology_lib.resolve("v5x-16")
  assert topology_lib.resolve("v5e:4x8").topology_name == "v5e:4x8"
  assert topology_lib.resolve("v5p-8").chip_config_name == "megacore"


def test_missing_libtpu_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(topology_lib, "libtpu_installed", lambda: False)
  with pytest.raises(RuntimeError, match=r"pip install -c requirements/lock.txt -e "
                     r"'\.\[tpu\]'"):
    topology_lib.devices("v5e-4")


def test_missing_cuda_plugin_says_how_to_install_it(monkeypatch):
  monkeypatch.setattr(gpu, "plugin_installed", lambda: False)
  with pytest.raises(RuntimeError, match=r"--no-deps -c requirements/lock.txt"
                     r" jax-cuda12-plugin"):
    topology_lib.devices("h100-8")
  with pytest.raises(ValueError, match=r"or a GPU: h100, h100-8"):
    topology_lib.resolve("h200")


@needs_cuda_plugin
def test_eight_h100s_fit_and_all_reduce_the_gradients_without_a_gpu():
  """XLA's GPU compiler answers memory but no cost analysis: the roofline has no step
  time and the table says so instead of a number."""
  reports = _reports("h100-8", (8, 1, 1), decode_batch=8)
  train, search = reports["train_step"], reports["beam_search"]
  assert (train["chip"], train["chips"], train["hosts"]) == ("h100", 8, 1)
  assert train["memory"]["fits"] and search["memory"]["fits"]
  assert _gradient_reduction_bytes(train) >= train["params"] * 4
  assert train["xla_flops_per_chip"] is None and train["roofline"]["step_s"] is None
  assert "| - | - |" in table_lib.training_row({"config": "smoke.py", **train})
  assert set(search["collectives"]["per_loop_iteration"]) == {"all-reduce"}


def test_out_of_memory_says_by_how_much_and_what_to_try():
  # XLA:TPU's message for the smoke train step at 262,144 rows on v5e-1.
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required"
             " for HLO temporaries (194.17G) exceeds available HBM (15.75G).")
  advice = report_lib.oom_advice(message, "train_step", remat=True)
  assert ("needs 194.17 GiB of the 15.75 GiB of HBM per chip for HLO temporaries"
          in advice)
  assert "over by 178.42 GiB" in advice
  assert "fsdp > 1" in advice and "--config.model.remat=True" in advice
  assert "remat" not in report_lib.oom_advice(message, "train_step", remat=False)


def test_the_command_rejects_an_unknown_topology_before_compiling():
  result = subprocess.run(
      [sys.executable, "compile_tpu.py", "--config=configs/smoke.py",
       "--topology=v9-4"], cwd=REPO, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode != 0
  assert "v5e-16" in result.stderr and "not a TPU topology" in result.stderr


def _reports(topology: str, mesh_shape, decode_batch: int, train: bool = True):
  """Reports of the smoke config's train step (if `train`) and beam search
  (`decode_batch` sentences) compiled for `topology` (libtpu, or the CUDA plugin for a GPU)."""
  from aot import programs  # pylint: disable=g-import-not-at-top
  from parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallel.sharding import Partitioner  # pylint: disable=g-import-not-at-top
  devices = topology_lib.devices(topology)
  config = smoke.get_config()
  partitioner = Partitioner(mesh_lib.create_mesh(mesh_shape, devices),
                            config.logical_axis_rules)
  vocab = config.data.vocab_size
  lowered = ([programs.training_programs(config, vocab, partitioner)[0]] * train
             + [programs.beam_search(config, vocab, partitioner, batch=decode_batch,
                                     src_len=16)])
  mesh = dict(partitioner.mesh.shape)
  return {p.name: report_lib.report(p, devices, topology, mesh)[0] for p in lowered}


def _gradient_reduction_bytes(report) -> int:
  step = report["collectives"]["per_step"]
  return sum(step.get(k, {}).get("bytes", 0) for k in ("all-reduce", "reduce-scatter"))


@needs_libtpu
def test_data_and_fsdp_on_v5e_4_fit_gather_parameters_and_reduce_gradients():
  reports = _reports("v5e-4", (2, 2, 1), decode_batch=8)
  train = reports["train_step"]
  assert (train["chips"], train["hosts"], train["chip"]) == (4, 1, "v5e")
  assert train["memory"]["fits"] and reports["beam_search"]["memory"]["fits"]
  assert train["memory"]["aliased_gib"] > 0  # The donated state is reused.
  # float32 gradients, halved by fsdp, are reduced across the other chips.
  assert _gradient_reduction_bytes(train) >= train["params"] * 4 / 2
  assert train["collectives"]["per_step"]["all-gather"]["count"] > 0  # FSDP gathers.
  assert train["roofline"]["step_s"] > 0 and 0 < train["roofline"]["mfu"] < 1
  assert not [t for t in reports["beam_search"]["host_transfers"] if t["in_loop"]]
  # The search reads parameters and its output table whole across 'fsdp': its loop
  # gathers nothing (38 all-gathers per step when they were laid out FSDP).
  assert set(reports["beam_search"]["collectives"]["per_loop_iteration"]) == {
      "all-reduce"}


@needs_libtpu
def test_a_decode_batch_that_does_not_split_over_the_chips_is_padded():
  """2 sentences on 4 chips run as 4 rows: left whole on every chip while their
  [batch * beam] rows were split, they resharded at every step (27 collectives)."""
  search = _reports("v5e-4", (4, 1, 1), decode_batch=2, train=False)["beam_search"]
  assert search["batch"] == 4
  loop = search["collectives"]["per_loop_iteration"]
  assert set(loop) == {"all-reduce"} and loop["all-reduce"]["count"] == 1


@needs_libtpu
def test_pure_data_parallel_on_multi_host_v5e_16_all_reduces_and_gathers_nothing():
  # A batch that divides the 16 chips: each chip searches its own sentences.
  reports = _reports("v5e-16", (16, 1, 1), decode_batch=16)
  train = reports["train_step"]
  assert (train["chips"], train["hosts"]) == (16, 4)
  assert train["memory"]["fits"] and reports["beam_search"]["memory"]["fits"]
  step = train["collectives"]["per_step"]
  assert step["all-reduce"]["bytes"] >= train["params"] * 4  # Whole f32 gradients.
  assert "all-gather" not in step  # Replicated parameters are never gathered.
  search = reports["beam_search"]["collectives"]
  assert "all-gather" not in search["per_step"]
  assert "all-gather" not in search["per_loop_iteration"]


def _equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """Operand dtypes of every dot_general in a jaxpr, sub-jaxprs included."""
  return [tuple(str(v.aval.dtype) for v in e.invars) for e in _equations(jaxpr)
          if e.primitive.name == "dot_general"]


def _tiny_model(dtype: str, rows: int = 2, **overrides):
  """(loss of params, params) of a small Transformer; dropout on if a rate is given."""
  from models import transformer  # pylint: disable=g-import-not-at-top
  cfg = transformer.TransformerConfig(**{
      **dict(vocab_size=128, pad_id=0, emb_dim=32, num_heads=4, num_encoder_layers=1,
             num_decoder_layers=1, qkv_dim=32, mlp_dim=64, max_len=16, dtype=dtype,
             dropout_rate=0.0, attention_dropout_rate=0.0), **overrides})
  graphdef, params = nnx.split(cfg.make_model()(), nnx.Param)
  tokens = jnp.arange(rows * 8, dtype=jnp.int32).reshape(rows, 8) % 127 + 1

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens, tokens, deterministic=False,
                                    rngs=jax.random.key(0))
    return logits.astype(jnp.float32).mean()
  return loss, params


def test_bf16_backward_pass_has_no_float32_dot():
  """The compiled bf16 train step had float32 x bf16 dots: the gradients of the
  attention logits (computed in float32) met the bf16 queries and keys."""
  loss, params = _tiny_model("bfloat16")
  dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  assert dots and not [d for d in dots if d != ("bfloat16", "bfloat16")]


def test_float32_gradients_are_those_of_a_plain_einsum(monkeypatch):
  from models import layers  # pylint: disable=g-import-not-at-top
  loss, params = _tiny_model("float32")
  ours = jax.grad(loss)(params)
  monkeypatch.setattr(layers, "attention_logits", lambda spec, q, k: jnp.einsum(
      spec, q, k, preferred_element_type=jnp.float32))
  plain = jax.grad(loss)(params)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_table_rows_show_fit_collectives_and_errors():
  from aot import table  # pylint: disable=g-import-not-at-top
  line = {"config": "smoke.py", "program": "train_step", "topology": "v5e-16",
          "chips": 16, "hosts": 4, "mesh": {"data": 16, "fsdp": 1, "tensor": 1},
          "batch": 16, "length": 32, "compile_s": 18.2,
          "memory": {"fits": True, "peak_gib": 0.5, "hbm_gib": 16.0,
                     "arguments_gib": 0.25, "temporaries_gib": 0.125},
          "collectives": {"per_step": {"all-reduce": {"count": 3, "bytes": 2**20}}},
          "roofline": {"step_s": 0.002, "bound_by": "hbm", "mfu": 0.25}}
  row = table.training_row(line)
  assert "| v5e-16 16 chips / 4 hosts | 16x1x1 | 16x32 | yes | 0.5 / 16 |" in row
  assert "AR 3x 1 |" in row and "2 (hbm) | 25.0% |" in row
  failed = {**line, "error": "train_step needs 20 GiB"}
  assert "| no: train_step needs 20 GiB |" in table.training_row(failed)


def test_remat_recomputes_every_layer_and_gives_the_same_gradients():
  """config.model.remat: each layer's activations are recomputed in the backward
  pass (one checkpoint per layer), and the gradients, dropout included, are equal."""
  kw = dict(num_encoder_layers=2, num_decoder_layers=3, dropout_rate=0.1)
  plain_loss, params = _tiny_model("float32", **kw)
  remat_loss, _ = _tiny_model("float32", remat=True, **kw)
  jaxpr = jax.make_jaxpr(jax.grad(remat_loss))(params).jaxpr
  assert sum(e.primitive.name.startswith("remat") for e in _equations(jaxpr)) == 5
  plain, remat = jax.jit(jax.grad(plain_loss))(params), jax.jit(jax.grad(remat_loss))(
      params)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@needs_libtpu
def test_remat_lowers_the_train_steps_temporaries_on_tpu():
  from aot import programs  # pylint: disable=g-import-not-at-top
  from parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallel.sharding import Partitioner  # pylint: disable=g-import-not-at-top
  devices = topology_lib.devices("v5e-1")
  temps = []
  for remat in (False, True):
    config = smoke.get_config()
    config.batch_tokens, config.model.remat = 512 * 32, remat
    partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), devices),
                              config.logical_axis_rules)
    train = programs.training_programs(config, config.data.vocab_size, partitioner)[0]
    temps.append(train.lowered.compile().memory_analysis().temp_size_in_bytes)
  assert temps[1] < 0.7 * temps[0], temps
