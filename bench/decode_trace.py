"""Where one compiled beam-search call spends its time, op by op, in the real loop.

  python -m bench.decode_trace --config=configs/transformer_base.py --batch_sizes=1,8,32

`bench/decode_profile.py` times each piece of a step as a program of its own; this
traces the whole jitted search instead. XLA:CPU emits one trace event per executed
op when `--xla_cpu_enable_xprof_traceme` is set (this module sets it), and the
compiled HLO names the source scope of every op, so op time is summed by the named
scope it comes from: `self_attention`, `cross_attention`, `mlp` and
`output_projection` in the model (`models/transformer.py`), `top_k`,
`beam_bookkeeping` and `cache_reorder` in the search (`models/search.py`), the rest
of the loop body, and what runs once per call before the loop (encoder,
cross-attention keys/values, output table). One JSON line per scope and batch: ms
per decoder step (op time, summed over threads) and share of all op time.
"""
import collections
import glob
import gzip
import json
import os
import re
import tempfile

# Must precede the CPU backend's creation, which reads XLA_FLAGS once.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_enable_xprof_traceme=true")

from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position

# Its flags (--config, --batch_sizes, --beam_size, --src_len, --max_decode_len,
# --vocab_size, --dtype) and random model serve here too.
from bench import decode_profile  # pylint: disable=wrong-import-position
from bench.synthetic import synthetic_sources  # pylint: disable=wrong-import-position
from data import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
from models import decoding  # pylint: disable=wrong-import-position

_CALLS = flags.DEFINE_integer("calls", 2, "Traced calls per batch size.")

# Named scopes of the loop body, in the order they are reported.
LOOP_SCOPES = ("self_attention", "cross_attention", "mlp", "output_projection",
               "top_k", "beam_bookkeeping", "cache_reorder")
BEFORE_LOOP = "before the loop (encoder, cross K/V, output table)"
REST_OF_LOOP = "rest of the loop body"
COPIES = "copies XLA inserted (no source op)"
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = ')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r'%([\w.\-]+)')
# Thunks whose trace events span the ops they run: counting them would count twice.
_CONTROL_FLOW = re.compile(r'\s(while|conditional|call)\(')


def op_scopes(hlo_text: str) -> dict[str, str | None]:
  """Instruction name -> the scope its time is charged to, from compiled HLO text.

  Ops XLA made without source metadata (split reductions, layout copies) are
  charged to the scope of the op that consumes them. Control-flow instructions map
  to None: their time is that of the ops inside.
  """
  scopes, users = {}, collections.defaultdict(list)
  for line in hlo_text.splitlines():
    if not (match := _INSTRUCTION.match(line)):
      continue
    name, rest = match.group(1), line[match.end():]
    operands = rest.split(", metadata=")[0]
    for operand in _OPERAND.findall(operands):
      users[operand].append(name)
    if _CONTROL_FLOW.search(operands):
      scopes[name] = None
    elif op_name := _OP_NAME.search(rest):
      parts = op_name.group(1).split("/")
      found = [s for s in LOOP_SCOPES if s in parts]
      scopes[name] = (BEFORE_LOOP if "while" not in parts
                      else found[0] if found else REST_OF_LOOP)
  for _ in range(4):  # Chains of metadata-less ops: follow users a few levels.
    for name, consumers in users.items():
      if name not in scopes:
        charged = [scopes[c] for c in consumers if scopes.get(c)]
        if charged:
          scopes[name] = charged[0]
  return scopes


def scope_of(op: str, scopes: dict[str, str | None]) -> str | None:
  """The scope of a traced op (XLA's `wrapped_` fusions are named after their op)."""
  for name in (op, op.removeprefix("wrapped_")):
    if name in scopes:
      return scopes[name]
  return COPIES if op.startswith("copy") else "unattributed"


def traced_op_ms(trace_dir: str, module: str) -> dict[str, float]:
  """Total ms per executed op of HLO module `module`, from the perfetto trace."""
  [path] = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  total = collections.Counter()
  for event in events:
    args = event.get("args", {})
    if event.get("ph") == "X" and args.get("hlo_module") == module:
      total[args["hlo_op"]] += event["dur"] / 1000
  return total


def trace_batch(search, graphdef, params, batch: int) -> list[dict]:
  """One row per scope: op ms per decoder step for a search over `batch` sentences."""
  steps = decode_profile.MAX_LEN.value
  inputs = synthetic_sources(batch, decode_profile.SRC_LEN.value,
                             decode_profile.VOCAB.value)
  kwargs = dict(eos_id=tokenizer_lib.EOS_ID, beam_size=decode_profile.BEAM.value,
                max_decode_len=steps, forced_len=steps)
  args = (graphdef, params, inputs, 0.6, 1.5, 10.0)
  compiled = search.jitted.lower(*args, **kwargs).compile()
  scopes = op_scopes(compiled.as_text())
  jax.block_until_ready(search(*args, **kwargs))  # Compiled and warm.
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(_CALLS.value):
      jax.block_until_ready(search(*args, **kwargs))
    jax.profiler.stop_trace()
    op_ms = traced_op_ms(trace_dir, f"jit_{decoding.beam_search.__name__}")
  by_scope = collections.Counter()
  for op, ms in op_ms.items():
    if (scope := scope_of(op, scopes)) is not None:
      by_scope[scope] += ms / _CALLS.value / steps
  total = sum(by_scope.values())
  order = LOOP_SCOPES + (REST_OF_LOOP, COPIES, BEFORE_LOOP, "unattributed")
  return [{"batch": batch, "scope": scope, "ms_per_step": round(by_scope[scope], 3),
           "share": round(by_scope[scope] / total, 3)}
          for scope in order if scope in by_scope] + [
              {"batch": batch, "scope": "all ops", "ms_per_step": round(total, 3)}]


def main(argv):
  del argv
  _, partitioner, graphdef, params = decode_profile.random_model()
  search = decoding.jit_beam_search(partitioner)
  for batch in (int(b) for b in decode_profile.BATCH_SIZES.value):
    for row in trace_batch(search, graphdef, params, batch):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
