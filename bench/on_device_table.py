"""The rounds of bench/on_device.py summed up: medians per (kind, CPU set), and the
Markdown table, one row per artifact kind with one value per CPU set ("a / b")."""
from collections.abc import Sequence
import statistics

import numpy as np

# Figures kept per round and summed up as their median.
MEDIANS = ("cold_start_s", "file_s", "peak_rss_bytes", "sentences_per_s",
           "p50_ms", "p90_ms", "first_pass_s", "load_s", "driver_peak_rss_bytes")


def round_figures(cold: dict, whole: dict, driver: dict, lines: int) -> dict:
  """One round's figures from the three child processes (bench/on_device.py)."""
  sentence_ms = [1000 * s for s in driver["sentence_s"]]
  return {
      "cold_start_s": round(cold["first_line_s"], 3),
      "file_s": round(whole["total_s"], 3),
      "peak_rss_bytes": whole["max_rss_bytes"],
      "sentences_per_s": round(lines / driver["warm_pass_s"], 1),
      "p50_ms": round(float(np.percentile(sentence_ms, 50)), 2),
      "p90_ms": round(float(np.percentile(sentence_ms, 90)), 2),
      "first_pass_s": driver["first_pass_s"], "load_s": driver["load_s"],
      "driver_peak_rss_bytes": driver["max_rss_bytes"],
  }


def summary(kind: str, cpus: str, rounds: Sequence[dict], facts: dict) -> dict:
  """The `result` line of one kind on one CPU set: medians over its rounds."""
  done = [r for r in rounds if "error" not in r]
  line = {"kind": "result", "artifact": kind, "cpus": cpus,
          "cores": len(expand_cpus(cpus)), "rounds": len(done), **facts}
  if errors := [r["error"] for r in rounds if "error" in r]:
    line["errors"] = errors
  for name in MEDIANS:
    if done:
      value = statistics.median(r[name] for r in done)
      line[name] = round(value, 3) if isinstance(value, float) else value
  line["per_round"] = {name: [r[name] for r in done] for name in MEDIANS}
  return line


def expand_cpus(cpus: str) -> list[int]:
  """taskset's list syntax: '0', '0,1', '0-3' -> CPU numbers."""
  out = []
  for part in cpus.split(","):
    low, _, high = part.partition("-")
    out += range(int(low), int(high or low) + 1)
  return out


def cell(text: str) -> str:
  """Text in a table cell: a | would end it."""
  return text.replace("|", "\\|")


def _mb(n) -> str:
  return f"{n / 1e6:.1f}"


def _per_set(results: Sequence[dict], field: str, fmt) -> str:
  values = [fmt(r) if r.get(field) is not None else "–" for r in results]
  return " / ".join(values)


COLUMNS = ("artifact", "size on disk, MB", "runtime installed, MB", "peak RSS, MB",
           "cold start, s", "one sentence p50 (p90), ms", "sentences/s",
           "whole file, start to exit, s", "BLEU")


def markdown(kinds: Sequence[str], results: dict, unavailable: dict,
             cpu_sets: Sequence[str]) -> str:
  """The table: `results` {(kind, cpus): result line}, `unavailable` {kind: why}."""
  cores = " / ".join(f"{len(expand_cpus(c))} core{'s' * (len(expand_cpus(c)) > 1)}"
                     for c in cpu_sets)
  rows = [f"| {' | '.join(COLUMNS)} |", f"|{'---|' * len(COLUMNS)}"]
  for kind in kinds:
    if kind in unavailable:
      rows.append(f"| {kind} | not available: {cell(unavailable[kind])} |"
                  + " – |" * (len(COLUMNS) - 2))
      continue
    per_set = [results[(kind, c)] for c in cpu_sets]
    first = per_set[0]
    bleus = {r.get("bleu_lc_tok") for r in per_set}
    cells = [
        kind, _mb(first["size_bytes"]), _mb(first["runtime_bytes"]),
        _per_set(per_set, "peak_rss_bytes", lambda r: _mb(r["peak_rss_bytes"])),
        _per_set(per_set, "cold_start_s", lambda r: f"{r['cold_start_s']:.2f}"),
        _per_set(per_set, "p50_ms",
                 lambda r: f"{r['p50_ms']:.1f} ({r['p90_ms']:.1f})"),
        _per_set(per_set, "sentences_per_s", lambda r: f"{r['sentences_per_s']:.0f}"),
        _per_set(per_set, "file_s", lambda r: f"{r['file_s']:.1f}"),
        (f"{bleus.pop():.2f}" if len(bleus) == 1 and None not in bleus
         else _per_set(per_set, "bleu_lc_tok", lambda r: f"{r['bleu_lc_tok']:.2f}")),
    ]
    if any(r.get("errors") for r in per_set):
      cells[0] += " (a round failed: see the JSON lines)"
    rows.append(f"| {' | '.join(cells)} |")
  legend = (f"Each cell: {cores} (taskset -c {' / '.join(cpu_sets)}), medians over"
            " rounds. Peak RSS: the runner's largest resident set on the whole file"
            " (ru_maxrss). Cold start: process start to the first"
            " output line, one sentence in. One sentence: the runtime's Python API,"
            " one call per sentence, warm. Sentences/s: the whole file in one call,"
            " warm. Whole file: the runner command, process start to exit. BLEU:"
            " bleu_lc_tok of the runner's whole-file output. Runtime installed: the"
            " pip distributions it needs (RECORD sizes), not Python itself.")
  return "\n".join(rows) + "\n\n" + legend
