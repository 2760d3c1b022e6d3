"""Every way to ship the model, side by side: size, runtime, memory, start-up, speed.

  python -m bench.on_device --workdir=workdir/default \\
      --checkpoint_dir=workdir/default/averaged_last5 \\
      --input=../shared/data/multi30k/test_2016_flickr.en.gz \\
      --reference=../shared/data/multi30k/test_2016_flickr.fr.gz \\
      --output_dir=build/on_device --output_jsonl=build/on_device/results.jsonl

Exports each artifact kind of bench/on_device_kinds.py into --output_dir with the
project's own command (`export.py --format=...`); a kind whose export fails, whose
runner file is missing or whose runtime is not installed gets a "not available" row
saying why. Then, for `--rounds` rounds, each kind on each of `--cpus`
(`taskset -c`), the kinds' order rotating each round so load drift hits all alike,
three fresh processes:

  cold    the runner command (stdin to stdout, as a user runs it) on the file's
          first line: process start to its first output line;
  file    the runner command on the whole file: process start to exit, its peak
          memory (ru_maxrss, bench/on_device_process.py) and its output's BLEU;
  driver  bench/on_device_child.py: the runtime's Python API translates the file
          twice (the second pass timed: sentences/s) and its first
          `--latency_sentences` lines one call each (p50/p90).

Our runtime (infer.py) uses a compilation cache per kind (`--compilation_cache`),
filled by an untimed run of both commands before the rounds (`--warmup`); the
StableHLO and ONNX runners have none, as shipped. CTranslate2 runs with
`intra_threads` = the set's CPU count; JAX's thread pools follow the CPUs the
process may use. Prints the Markdown table (medians over rounds) after a header line
naming the machine, the versions and the command; `--output_jsonl` gets a header
line, a `result` line per (kind, CPU set) with every round's figures, and an
`unavailable` line per missing kind.
"""
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

# A CPU benchmark: JAX need not probe for accelerators (a TPU plugin warns at length).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app
from absl import flags

from bench import on_device_kinds as kinds_lib
from bench import on_device_process as process
from bench import on_device_table as table
from bench import provenance
from bench import real_text_engines

REPO = kinds_lib.REPO

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Parameters to export and run; default the run's final"
    " average (WORKDIR/averaged_lastN) if it exists, else WORKDIR/checkpoints.")
_INPUT = flags.DEFINE_string("input", None, "Source sentences, one per line (.gz read"
                             " as gzip); without it, --split.")
_REFERENCE = flags.DEFINE_string("reference", None, "Line-aligned references of"
                                 " --input, for BLEU.")
_SPLIT = flags.DEFINE_string("split", "test_2016_flickr", "Without --input: the TFDS"
                             " split (the run's data config) to translate and score.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the exports, inputs,"
                                  " outputs and caches go; default a temporary folder,"
                                  " deleted at the end.")
_OUTPUT_JSONL = flags.DEFINE_string("output_jsonl", None, "Also write the JSON lines"
                                    " here.")
_KINDS = flags.DEFINE_list("kinds", list(kinds_lib.KIND_NAMES), "Artifact kinds.")
_CPUS = flags.DEFINE_multi_string("cpus", ["0", "0,1"], "taskset -c CPU lists, one"
                                  " value per table cell each (repeat the flag).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds over every kind and CPU set.",
                               lower_bound=1)
_LATENCY_SENTENCES = flags.DEFINE_integer(
    "latency_sentences", 100, "Lines timed one call each for p50/p90.", lower_bound=1)
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 0, "Use the first N lines"
                                      " (0: all).", lower_bound=0)
_WARMUP = flags.DEFINE_bool("warmup", True, "Run each runner once on the first line"
                            " and the file before the rounds (fills our compilation"
                            " caches, checks the runner works).")
_CACHE = flags.DEFINE_bool("compilation_cache", True, "Our runtime (infer.py and the"
                            " driver) keeps a JAX compilation cache per kind in"
                            " --output_dir; false: none, so each of our processes"
                            " compiles, as the StableHLO runner does.")
_REUSE_EXPORTS = flags.DEFINE_bool("reuse_exports", False, "Keep an export already"
                                   " in --output_dir (a SHA256SUMS there) instead of"
                                   " exporting again.")
_CT2_BATCH_TOKENS = flags.DEFINE_integer("ct2_batch_tokens", 4096, "CTranslate2's"
                                         " whole-file max_batch_size in tokens.")
_CT2_LENGTH_PENALTY = flags.DEFINE_float(
    "ct2_length_penalty", 1.0, "CTranslate2's length_penalty, as bench/real_text.py"
    " sets it.")
_TIMEOUT = flags.DEFINE_integer("child_timeout_s", 1800, "Seconds a child process may"
                                " run before it is killed.", lower_bound=1)


def checkpoint_dir() -> str | None:
  if _CHECKPOINT_DIR.value:
    return os.path.abspath(_CHECKPOINT_DIR.value)
  from storage import layout  # pylint: disable=import-outside-toplevel
  averaged = layout.final_average_dir(_WORKDIR.value)
  return averaged and str(averaged)


def read_data() -> tuple[list[str], list[str]]:
  if _INPUT.value:
    if not _REFERENCE.value:
      raise app.UsageError("--input needs --reference (BLEU is a column).")
    sources = real_text_engines.read_lines(_INPUT.value)
    references = real_text_engines.read_lines(_REFERENCE.value)
  else:
    from inference import evaluate  # pylint: disable=import-outside-toplevel
    sources, references = evaluate.read_split(_WORKDIR.value, _SPLIT.value)
  if len(sources) != len(references):
    raise app.UsageError(f"{len(sources)} sources but {len(references)} references:"
                         " give line-aligned files.")
  if _MAX_SENTENCES.value:
    sources, references = (sources[:_MAX_SENTENCES.value],
                           references[:_MAX_SENTENCES.value])
  if not all(s.strip() for s in sources):
    raise app.UsageError("The input has empty lines: give sentences only.")
  return sources, references


def export(kind: kinds_lib.Kind, directory: str, checkpoints: str | None) -> dict:
  """Runs `export.py` for the kind into `directory`; its seconds and command."""
  argv = [sys.executable, "export.py", *kind.export_flags,
          f"--workdir={os.path.abspath(_WORKDIR.value)}", f"--output={directory}"]
  if checkpoints:
    argv.append(f"--checkpoint_dir={checkpoints}")
  command = shlex.join(["python", *argv[1:]])
  if _REUSE_EXPORTS.value and os.path.exists(os.path.join(directory, "SHA256SUMS")):
    return {"export_s": None, "export_command": command}
  start = time.perf_counter()
  result = subprocess.run(argv, cwd=REPO, env=process.child_env(), capture_output=True,
                          text=True, check=False, timeout=_TIMEOUT.value)
  if result.returncode != 0:
    raise process.ChildFailed(f"`export.py {' '.join(kind.export_flags)}` failed:"
                              f" {process.reason(result.stderr, result.returncode)}")
  return {"export_s": round(time.perf_counter() - start, 1), "export_command": command}


def ct2_engine(model_dir: str, precision: str, threads: int) -> dict:
  """bench/real_text_engines.CTranslate2's fields for an exported directory: the
  run's decode settings, as bench/real_text.py sets them."""
  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib
  from inference import export as export_lib
  from inference import restore
  from inference.decoder import DecodeSettings
  from storage import layout
  config = layout.read_config(_WORKDIR.value)
  tokenizer = tokenizer_lib.load_from_workdir(_WORKDIR.value)
  settings = DecodeSettings.from_config(config.get("decode"))
  max_len = restore.model_config(_WORKDIR.value, config, tokenizer).max_len
  options = {**export_lib.translate_options(
      export_lib.vocabulary(tokenizer), beam_size=settings.beam_size,
      max_decoding_length=max_len), "length_penalty": _CT2_LENGTH_PENALTY.value}
  return {"model_dir": model_dir, "precision": precision, "threads": threads,
          "spm_path": os.path.join(model_dir, "spm.model"), "options": options,
          "max_len_a": settings.max_len_a, "max_len_b": settings.max_len_b,
          "max_len": max_len, "batch_tokens": _CT2_BATCH_TOKENS.value}


class Artifact:
  """One exported kind: its directory and the commands that run it."""

  def __init__(self, kind: kinds_lib.Kind, directory: str, checkpoints: str | None,
               cache_dir: str):
    self.kind, self.directory, self.checkpoints = kind, directory, checkpoints
    self.cache_dir = cache_dir
    self.runtime = kinds_lib.RUNTIMES[kind.runtime]
    self._ct2 = {}

  def _engine(self, threads: int) -> dict:
    if threads not in self._ct2:
      self._ct2[threads] = ct2_engine(self.directory, self.kind.precision, threads)
    return self._ct2[threads]

  def runner(self, threads: int) -> list[str]:
    """The command a user runs: stdin to stdout."""
    if self.runtime.name == "ours":
      argv = [sys.executable, "infer.py", "--mode=translate",
              f"--workdir={self.directory}",
              f"--compilation_cache_dir={self.cache_dir}"]
      return argv + ([f"--checkpoint_dir={self.checkpoints}"]
                     if self.kind.export_flags is None and self.checkpoints else [])
    if self.runtime.name == "ctranslate2":
      return [sys.executable, "-m", "bench.on_device_child", "translate",
              json.dumps({"runtime": "ctranslate2", "engine": self._engine(threads)})]
    return [sys.executable, self.runtime.runner_file, self.directory]

  def driver(self, threads: int, input_file: str) -> list[str]:
    """bench/on_device_child.py latency for this kind."""
    if self.runtime.name == "ours":
      spec = {"runtime": "ours", "workdir": self.directory,
              "checkpoint_dir": self.checkpoints if self.kind.export_flags is None
                                else None, "cache_dir": self.cache_dir}
    elif self.runtime.name == "ctranslate2":
      spec = {"runtime": "ctranslate2", "engine": self._engine(threads)}
    else:
      spec = {"runtime": "runner", "model_dir": self.directory,
              "runner_file": os.path.join(REPO, self.runtime.runner_file)}
    spec.update(input=input_file, latency_sentences=_LATENCY_SENTENCES.value)
    return [sys.executable, "-m", "bench.on_device_child", "latency", json.dumps(spec)]


def prepare(kind: kinds_lib.Kind, out: str, checkpoints: str | None) -> dict:
  """Exports the kind (unless it is the workdir): its Artifact and static facts, or
  raises process.ChildFailed saying why it is not available."""
  runtime = kinds_lib.RUNTIMES[kind.runtime]
  if why := kinds_lib.missing(runtime):
    raise process.ChildFailed(why)
  if kind.export_flags is None:
    directory = os.path.abspath(_WORKDIR.value)
    facts = {"size_bytes": kinds_lib.workdir_bytes(directory, checkpoints),
             "export_command": None, "export_s": None}
  else:
    directory = os.path.join(out, kind.directory)
    facts = export(kind, directory, checkpoints)
    facts["size_bytes"] = kinds_lib.tree_bytes(directory)
  facts.update(kinds_lib.runtime_bytes(runtime))
  cache = ""  # Off.
  if _CACHE.value:
    cache = os.path.join(out, "compilation_cache", kind.directory)
    os.makedirs(cache, mode=0o700, exist_ok=True)
  artifact = Artifact(kind, directory, checkpoints, cache)
  facts["runner_command"] = shlex.join(["python", *artifact.runner(1)[1:]])
  return {"artifact": artifact, "facts": facts}


def pinned(cpus: str, argv: list[str], stdin_path: str) -> dict:
  """`process.spawn` of argv under `taskset -c cpus`."""
  return process.spawn(["taskset", "-c", cpus, *argv], stdin_path,
                       process.child_env(), _TIMEOUT.value)


def measure(artifact: Artifact, cpus: str, files: dict, lines: int) -> dict:
  """One round of one kind on one CPU set: the cold, file and driver processes."""
  threads = len(table.expand_cpus(cpus))
  cold = pinned(cpus, artifact.runner(threads), files["first"])
  if not cold["stdout"]:
    raise process.ChildFailed("the runner printed no line for the first line")
  whole = pinned(cpus, artifact.runner(threads), files["input"])
  texts = whole["stdout"].split("\n")[:-1]
  if len(texts) != lines:
    raise process.ChildFailed(f"the runner wrote {len(texts)} lines for {lines}")
  driver = pinned(cpus, artifact.driver(threads, files["input"]), os.devnull)
  figures = json.loads(driver["stdout"].strip().splitlines()[-1])
  figures["max_rss_bytes"] = driver["max_rss_bytes"]
  return {**table.round_figures(cold, whole, figures, lines), "texts": texts}


def header(settings: dict) -> dict:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  versions = {}
  for name in ("jax", "jaxlib", "numpy", "sentencepiece", "ctranslate2", "onnxruntime"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return {"kind": "header",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "command": shlex.join(["python", "-m", "bench.on_device", *sys.argv[1:]]),
          **settings, "python": platform.python_version(), **versions,
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "CT2_USE_MKL": os.environ.get("CT2_USE_MKL"),
          "git": provenance.git_commit(),
          **provenance.cpu(),
          "peak_memory": process.peak_memory()}


def header_line(h: dict) -> str:
  versions = ", ".join(f"{n} {h[n]}" for n in ("jax", "ctranslate2", "onnxruntime")
                       if n in h)
  return (f"{h['date']}, {h['cpu']} ({h['cpu_count']} CPUs, load average"
          f" {h['load_average'][0]:.2f} at the start), Python {h['python']},"
          f" {versions},"
          f" git {h['git']}, {h['sentences']} sentences, {h['rounds']} rounds:"
          f" `{h['command']}`")


def run(out: str, emit) -> None:
  """Exports, warm-up, rounds, then the table on stdout; JSON lines through emit."""
  sources, references = read_data()
  files = {"input": os.path.join(out, "input.txt"),
           "first": os.path.join(out, "first_line.txt")}
  with open(files["input"], "w", encoding="utf-8") as f:
    f.write("".join(s + "\n" for s in sources))
  with open(files["first"], "w", encoding="utf-8") as f:
    f.write(sources[0] + "\n")
  checkpoints = checkpoint_dir()
  settings = {"workdir": os.path.abspath(_WORKDIR.value), "checkpoint_dir": checkpoints,
              "input": _INPUT.value or f"split:{_SPLIT.value}",
              "sentences": len(sources), "rounds": _ROUNDS.value,
              "cpus": _CPUS.value, "load_average": os.getloadavg(),
              "compilation_cache": _CACHE.value, "warmup": _WARMUP.value,
              "latency_sentences": min(_LATENCY_SENTENCES.value, len(sources))}
  ready, unavailable = {}, {}
  for name in _KINDS.value:
    kind = next(k for k in kinds_lib.KINDS if k.name == name)
    try:
      ready[name] = prepare(kind, out, checkpoints)
    except (process.ChildFailed, subprocess.TimeoutExpired) as e:
      unavailable[name] = str(e)
    print(f"on_device: {name}: {unavailable.get(name, 'ready')}", file=sys.stderr,
          flush=True)
  if _WARMUP.value:
    widest = max(_CPUS.value, key=lambda c: len(table.expand_cpus(c)))
    for name, entry in list(ready.items()):
      runner = entry["artifact"].runner(len(table.expand_cpus(widest)))
      try:
        for stdin in (files["first"], files["input"]):
          pinned(widest, runner, stdin)
      except process.ChildFailed as e:
        unavailable[name] = f"runner failed: {e}"
        del ready[name]
  h = header(settings)
  emit(h)
  rounds = {(name, cpus): [] for name in ready for cpus in _CPUS.value}
  names = list(ready)
  for r in range(_ROUNDS.value):
    start = time.perf_counter()
    order = names[r % len(names):] + names[:r % len(names)] if names else []
    for cpus in _CPUS.value:
      for name in order:
        try:
          figures = measure(ready[name]["artifact"], cpus, files, len(sources))
        except (process.ChildFailed, json.JSONDecodeError, IndexError) as e:
          figures = {"error": str(e)}
        rounds[(name, cpus)].append(figures)
    print(f"on_device: round {r + 1} of {_ROUNDS.value}:"
          f" {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  from inference import bleu  # pylint: disable=import-outside-toplevel
  results, scored = {}, {}
  for (name, cpus), done in rounds.items():
    line = table.summary(name, cpus, done, ready[name]["facts"])
    outputs = [r.pop("texts") for r in done if "texts" in r]
    if outputs:
      key = "\n".join(outputs[-1])
      if key not in scored:
        scored[key] = bleu.score(outputs[-1], references)["bleu_lc_tok"]
      line["bleu_lc_tok"] = scored[key]
      line["outputs_identical"] = all(o == outputs[-1] for o in outputs)
    results[(name, cpus)] = line
    emit(line)
  for name, why in unavailable.items():
    emit({"kind": "unavailable", "artifact": name, "reason": why})
  print(header_line(h) + "\n")
  print(table.markdown(_KINDS.value, results, unavailable, _CPUS.value))
  print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bad := sorted(set(_KINDS.value) - set(kinds_lib.KIND_NAMES)):
    raise app.UsageError(f"--kinds: {bad} are not kinds; choose from"
                         f" {', '.join(kinds_lib.KIND_NAMES)}.")
  if shutil.which("taskset") is None:
    raise app.UsageError("taskset (util-linux) is needed to pin the processes.")
  allowed = os.sched_getaffinity(0)
  for cpus in _CPUS.value:
    if not set(table.expand_cpus(cpus)) <= allowed:
      raise app.UsageError(f"--cpus={cpus} is not within this process's CPUs"
                           f" {sorted(allowed)}.")
  for path in (_OUTPUT_DIR.value, os.path.dirname(_OUTPUT_JSONL.value or "")):
    if path:
      os.makedirs(path, exist_ok=True)
  sink = None
  if _OUTPUT_JSONL.value:
    sink = open(_OUTPUT_JSONL.value, "w", encoding="utf-8")  # pylint: disable=R1732

  def emit(line: dict) -> None:
    if sink:
      sink.write(json.dumps(line) + "\n")
      sink.flush()

  try:
    if _OUTPUT_DIR.value:
      run(os.path.abspath(_OUTPUT_DIR.value), emit)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        run(tmp, emit)
  finally:
    if sink:
      sink.close()


if __name__ == "__main__":
  app.run(main)
