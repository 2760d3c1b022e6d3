"""What a compiled HLO module does, read from its text (`compiled.as_text()`).

Instructions are parsed, not grepped: each `%name = shape opcode(operands), attrs`
line gives its opcode, result shape and operands, whose shapes come from their own
definitions. Collectives get their bytes from those shapes and their group size from
`replica_groups`; instructions reached from a `while` body are marked as running once
per loop iteration. XLA:TPU lowers a reduce-scatter as an all-reduce inside a fusion
computation named `all-reduce-scatter*`; that pair is reported as one reduce-scatter.
"""
import collections
import dataclasses
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1,
                "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\((.*)\)\s*->\s*(.*)\{\s*$")
_CALLEES = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)"
    r"=%([\w.\-]+)|branch_computations=\{([^}]*)\}")
_HOST_TARGETS = ("callback", "host", "Outfeed", "Infeed")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  shape: str  # Result shape text, e.g. 'f32[8,128]{1,0}' or a tuple '(...)'.
  operands: tuple[str, ...]
  attrs: str  # Everything after the operand list.
  computation: str


def array_bytes(shape: str) -> int:
  """Bytes of every array in a shape text (a tuple sums its elements)."""
  return int(sum(_DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x)
                 for d, dims in _ARRAY.findall(shape)))


def dtypes(shape: str) -> set[str]:
  return {d for d, _ in _ARRAY.findall(shape)}


def _split_shape(rest: str) -> tuple[str, str]:
  """'shape opcode(...)...' -> (shape, 'opcode(...)...'); tuples nest parentheses."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].strip()
  shape, _, tail = rest.partition(" ")
  return shape, tail.strip()


def _operands_and_attrs(call: str) -> tuple[str, tuple[str, ...], str]:
  """'opcode(%a, %b), attrs' -> (opcode, ('a', 'b'), attrs)."""
  opcode, _, tail = call.partition("(")
  depth, end = 1, len(tail)
  for i, ch in enumerate(tail):
    depth += ch in "({["
    depth -= ch in ")}]"
    if depth == 0:
      end = i
      break
  operands = tuple(re.findall(r"%([\w.\-]+)", tail[:end]))
  return opcode.strip(), operands, tail[end + 1:]


@dataclasses.dataclass
class Module:
  """The instructions of an HLO module, by computation, with loop membership."""
  instructions: list[Instruction]
  shapes: dict[str, str]  # Value name -> shape text (instructions and parameters).
  results: dict[str, str]  # Computation -> result shape text.
  in_loop: set[str]  # Computations that run once per iteration of some while loop.

  @classmethod
  def parse(cls, text: str) -> "Module":
    instructions, shapes, results, calls = [], {}, {}, collections.defaultdict(set)
    bodies, computation = set(), ""
    for line in text.splitlines():
      header = _HEADER.match(line)
      if header:
        computation = header.group(1)
        results[computation] = header.group(3).strip()
        for param, shape in re.findall(r"([\w.\-]+):\s*((?:\([^)]*\))|[^,()]+)",
                                       header.group(2)):
          shapes.setdefault(param, shape)
        continue
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      shape, call = _split_shape(match.group(2))
      opcode, operands, attrs = _operands_and_attrs(call)
      inst = Instruction(match.group(1), opcode, shape, operands, attrs, computation)
      instructions.append(inst)
      shapes[inst.name] = shape
      for single, branches in _CALLEES.findall(attrs):
        for callee in [single] if single else re.findall(r"%([\w.\-]+)", branches):
          calls[computation].add(callee)
      if opcode == "while":
        bodies.update(re.findall(r"\b(?:body|condition)=%([\w.\-]+)", attrs))
    in_loop, todo = set(), list(bodies)
    while todo:
      c = todo.pop()
      if c not in in_loop:
        in_loop.add(c)
        todo.extend(calls.get(c, ()))
    return cls(instructions, shapes, results, in_loop)

  def operand_bytes(self, inst: Instruction) -> int:
    return sum(array_bytes(self.shapes.get(o, "")) for o in inst.operands)


def group_size(attrs: str, num_devices: int) -> int:
  """Participants per group of a collective, from its `replica_groups` attribute.

  Forms: `mesh['axis_0'=2,'axis_1'=2] {'axis_1'}` (the listed axes' sizes multiply),
  iota `[groups,size]<=[...]`, explicit `{{0,1},{2,3}}`, or empty (all devices).
  """
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
  if mesh:
    sizes = dict(re.findall(r"'([\w]+)'=(\d+)", mesh.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([\w]+)'", mesh.group(2)))
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
  if iota:
    return int(iota.group(1).split(",")[-1])
  explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
  if explicit:
    return len(explicit.group(1).split(","))
  return num_devices


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str  # One of COLLECTIVES.
  name: str
  group: int  # Devices per replica group.
  operand_bytes: int  # Per device.
  result_bytes: int
  in_loop: bool  # Runs once per iteration of a while loop.

  @property
  def ici_bytes(self) -> float:
    """Bytes each device sends in a bandwidth-optimal (ring) algorithm."""
    n = max(self.group, 1)
    if self.kind == "all-reduce":
      return 2 * (n - 1) / n * self.operand_bytes
    if self.kind == "all-gather":
      return (n - 1) / n * self.result_bytes
    if self.kind in ("reduce-scatter", "all-to-all"):
      return (n - 1) / n * self.operand_bytes
    return float(self.operand_bytes)  # collective-permute: each sends its operand.


def collectives(module: Module, num_devices: int) -> list[Collective]:
  """Every collective of the module, async start/done pairs counted once."""
  found = []
  for inst in module.instructions:
    kind = inst.opcode.removesuffix("-start")
    if kind not in COLLECTIVES or inst.opcode.endswith("-done"):
      continue
    operand_bytes = module.operand_bytes(inst)
    result_bytes = array_bytes(inst.shape)
    if inst.opcode.endswith("-start") and kind != "all-reduce":
      result_bytes -= operand_bytes  # Its shape is (operand, result, ...).
    if kind == "all-reduce" and inst.computation.startswith("all-reduce-scatter"):
      kind, result_bytes = "reduce-scatter", array_bytes(
          module.results[inst.computation])
    found.append(Collective(kind, inst.name, group_size(inst.attrs, num_devices),
                            operand_bytes, result_bytes,
                            inst.computation in module.in_loop))
  return found


def summarize_collectives(found: list[Collective]) -> dict:
  """{kind: {count, bytes, ici_bytes}} per step, plus loop-body ones per iteration.

  `bytes` is the data each device holds at the wide end: an all-gather's result, a
  reduce-scatter's operand, an all-reduce's operand.
  """
  def table(items):
    out = {}
    for c in items:
      row = out.setdefault(c.kind, {"count": 0, "bytes": 0, "ici_bytes": 0})
      row["count"] += 1
      row["bytes"] += max(c.operand_bytes, c.result_bytes)
      row["ici_bytes"] += int(c.ici_bytes)
    return out
  return {"per_step": table(c for c in found if not c.in_loop),
          "per_loop_iteration": table(c for c in found if c.in_loop)}


def dot_operand_dtypes(module: Module) -> dict[str, int]:
  """Count of dot/convolution instructions by the dtypes of their operands."""
  counts = collections.Counter()
  for inst in module.instructions:
    if inst.opcode in ("dot", "convolution"):
      kinds = sorted(set().union(*(dtypes(module.shapes.get(o, ""))
                                   for o in inst.operands)))
      counts["+".join(kinds) or "?"] += 1
  return dict(counts)


def host_transfers(module: Module) -> list[dict]:
  """Host callbacks, sends/receives and in/outfeeds, with whether they sit in a loop."""
  found = []
  for inst in module.instructions:
    target = re.search(r'custom_call_target="([^"]*)"', inst.attrs)
    host_call = inst.opcode == "custom-call" and target and any(
        t.lower() in target.group(1).lower() for t in _HOST_TARGETS)
    if host_call or inst.opcode in ("send", "recv", "infeed", "outfeed"):
      found.append({"name": inst.name, "opcode": inst.opcode,
                    "target": target.group(1) if target else None,
                    "in_loop": inst.computation in module.in_loop})
  return found


_LAYOUT = re.compile(r"\[[0-9,]*\](\{[^}]*\})?")


def _memory_spaces(shape: str) -> list[str]:
  """Memory space of each array in a shape text: 'S(1)' etc., '' for the default."""
  return [(re.search(r"S\(\d+\)", layout or "") or [""])[0]
          for layout in _LAYOUT.findall(shape)]


def loop_copies(module: Module, min_bytes: int = 1 << 20) -> tuple[list, int]:
  """(copies of at least `min_bytes` inside while loops, largest first; bytes the
  loops move between memory spaces per iteration).

  An async copy whose source and destination lie in different memory spaces (XLA's
  memory-space assignment prefetching into, or evicting from, the TPU's faster
  memory) moves data the program reads anyway: it is counted apart, not listed.
  """
  found, moved = [], 0
  for inst in module.instructions:
    if (inst.opcode not in ("copy", "copy-start")
        or inst.computation not in module.in_loop):
      continue
    size = module.operand_bytes(inst)  # A copy-start's shape is (dest, src, ...).
    if inst.opcode == "copy-start" and len(set(_memory_spaces(inst.shape)[:2])) > 1:
      moved += size
    elif size >= min_bytes:
      found.append({"name": inst.name, "bytes": size,
                    "shape": module.shapes.get(inst.operands[0], "").split("{")[0]})
  return sorted(found, key=lambda c: -c["bytes"]), moved
