"""Every compile-only run behind docs/tpu.md, in one command.

  python -m aot.sweep --out=docs/tpu_runs [--only=REGEX] [--jobs=2] [--list]

Each run is one `compile_tpu.py` process writing OUT/NAME.jsonl (its JSON lines); a
run whose file is there already is skipped, so an interrupted sweep resumes where it
stopped and `--only` adds runs one at a time. A run that does not fit keeps its
lines (with `fits: false`): that is a result. After the runs, the tables of
docs/tpu.md are printed from every file in OUT, in the order of RUNS.
"""
import argparse
import concurrent.futures
import dataclasses
import os
import re
import subprocess
import sys
import time

from aot import table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPUS = ("v5e-4", "v5e-16", "v5p-8", "v4-8", "v6e-8")  # v5e-16: 4 hosts.
MESHES = {"data": "-1,1,1", "fsdp": "1,-1,1", "fsdp_tensor": "1,-1,2"}
SERVING = ("--programs=beam_search", "--decode_dtype=bfloat16")
TRAINING = ("--programs=train_step,eval_step",)


@dataclasses.dataclass(frozen=True)
class Run:
  """One compile_tpu.py invocation: configs/CONFIG.py on TOPOLOGY with MESH."""
  config: str
  topology: str
  mesh: str  # A key of MESHES, or "single" (1,1,1).
  flags: tuple[str, ...] = ()
  tag: str = ""  # Tells apart runs of the same config, topology and mesh.

  @property
  def name(self) -> str:
    return ".".join(filter(None, (self.config, self.topology, self.mesh, self.tag)))

  def command(self) -> list[str]:
    mesh = "1,1,1" if self.mesh == "single" else MESHES[self.mesh]
    return [sys.executable, os.path.join(REPO, "compile_tpu.py"),
            f"--config={os.path.join(REPO, 'configs', self.config + '.py')}",
            f"--topology={self.topology}", f"--mesh_shape={mesh}", *self.flags]


def _runs() -> list[Run]:
  runs = []
  # Small configs: every program on every topology and mesh; one serving batch.
  for config in ("smoke", "default"):
    runs += [Run(config, tpu, mesh, ("--decode_batch_sizes=8",))
             for tpu in TPUS for mesh in MESHES]
  runs += [Run(config, tpu, "data", ("--decode_batch_sizes=8",))
           for config in ("multi30k_best", "multi30k_distill") for tpu in TPUS]
  # Activation memory with and without remat, on one chip.
  runs += [Run("smoke", "v5e-1", "single",
               ("--programs=train_step", "--config.batch_tokens=16384", *remat),
               tag="rows512" + ("_remat" if remat else ""))
           for remat in ((), ("--config.model.remat=True",))]
  # The large configs: training on every topology's data mesh and on v5e-16's
  # sharded meshes; serving in bf16 on one chip and on four.
  for config in ("transformer_base", "transformer_big"):
    runs += [Run(config, tpu, "data", TRAINING) for tpu in TPUS]
    runs += [Run(config, "v5e-16", mesh, TRAINING) for mesh in ("fsdp", "fsdp_tensor")]
    runs += [Run(config, "v5e-1", "single", SERVING, tag="serve"),
             Run(config, "v5e-4", "data", SERVING, tag="serve")]
  # The largest global batch that fits (128 tokens a row): a ladder of train steps.
  for config, rows in (("transformer_base", (4096, 6144, 8192)),
                       ("transformer_big", (1024, 2048, 3072))):
    runs += [Run(config, "v5e-16", "data", ("--programs=train_step",
                                            f"--config.batch_tokens={r * 128}"),
                 tag=f"rows{r}") for r in rows]
  # H100s through the CUDA plugin (the [cuda-compile] extra).
  runs += [Run("smoke", "h100-8", "data", ("--decode_batch_sizes=8",)),
           Run("default", "h100", "single", ("--decode_batch_sizes=8",)),
           Run("default", "h100-8", "data", ("--decode_batch_sizes=8",)),
           Run("transformer_base", "h100-8", "data", TRAINING),
           Run("transformer_base", "h100", "single", SERVING, tag="serve")]
  return runs


RUNS = _runs()


def run_one(run: Run, out: str) -> tuple[Run, int, float]:
  """Compiles one run into OUT/NAME.jsonl (written whole, or not at all)."""
  path = os.path.join(out, run.name + ".jsonl")
  start = time.monotonic()
  with open(path + ".tmp", "w", encoding="utf-8") as stdout, \
       open(os.path.join(out, run.name + ".log"), "w", encoding="utf-8") as stderr:
    code = subprocess.call(run.command(), stdout=stdout, stderr=stderr, cwd=REPO)
  # Exit 1 with lines: a program did not fit, which the lines say. Anything else
  # (no lines, or a crash) is no result and is run again next time.
  if code in (0, 1) and os.path.getsize(path + ".tmp"):
    os.replace(path + ".tmp", path)
  return run, code, time.monotonic() - start


def tables(out: str) -> str:
  """docs/tpu.md's tables from the JSON lines in OUT, in the order of RUNS."""
  paths = [os.path.join(out, r.name + ".jsonl") for r in RUNS]
  return table.render([p for p in paths if os.path.exists(p)])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="Folder of the JSON lines.")
  parser.add_argument("--only", default="", help="Regex over run names.")
  parser.add_argument("--jobs", type=int, default=1, help="Compiles at a time.")
  parser.add_argument("--list", action="store_true", help="Print the runs and exit.")
  args = parser.parse_args(argv)
  wanted = [r for r in RUNS if re.search(args.only, r.name)]
  if args.list:
    for r in wanted:
      done = os.path.exists(os.path.join(args.out, r.name + ".jsonl"))
      print(f"{'done' if done else 'todo'}  {r.name}  {' '.join(r.command()[1:])}")
    return 0
  os.makedirs(args.out, exist_ok=True)
  todo = [r for r in wanted if not os.path.exists(os.path.join(args.out,
                                                                r.name + ".jsonl"))]
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    for run, code, seconds in pool.map(lambda r: run_one(r, args.out), todo):
      print(f"{run.name}: exit {code} in {seconds:.0f} s", file=sys.stderr, flush=True)
      if code not in (0, 1):
        failed.append(run.name)
  print(tables(args.out))
  if failed:
    print(f"no result (see OUT/NAME.log): {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
