"""Markdown tables from compile_tpu.py's JSON lines: `python -m aot.table FILE...`.

Training programs and the beam search get one table each; a program that did not fit
shows its error. Sizes are per chip; MiB are 2**20 bytes.
"""
import json
import sys

MiB = 2**20
_KINDS = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS",
          "all-to-all": "A2A", "collective-permute": "CP"}


def _collectives(table: dict) -> str:
  return ", ".join(f"{_KINDS[k]} {v['count']}x {v['bytes'] / MiB:.3g}"
                   for k, v in sorted(table.items())) or "none"


def _mesh(line: dict) -> str:
  m = line["mesh"]
  return f"{m['data']}x{m['fsdp']}x{m['tensor']}"


def _where(line: dict) -> str:
  hosts = "1 host" if line.get("hosts") == 1 else f"{line.get('hosts')} hosts"
  chips = (f"{line['chips']} chip{'s' * (line['chips'] > 1)} / {hosts}"
           if "chips" in line else "")
  return f"{line['topology']} {chips}".strip()


def _step_ms(roofline: dict) -> str:
  if roofline.get("step_s") is None:  # No FLOPs from XLA (its GPU compiler).
    return "-"
  return f"{roofline['step_s'] * 1e3:.3g} ({roofline['bound_by']})"


def training_row(line: dict) -> str:
  program = line["program"] + (" (remat)" if line.get("remat") else "")
  head = (f"| {line.get('config', '')} | {program} | {_where(line)} |"
          f" {_mesh(line)} | {line['batch']}x{line['length']} |")
  if "error" in line:
    return head + f" no: {line['error']} |" + " |" * 6
  mem, roof = line["memory"], line["roofline"]
  mfu = f"{roof['mfu']:.1%}" if roof.get("mfu") is not None else "-"
  return (head + f" {'yes' if mem['fits'] else 'no'} | {mem['peak_gib']:.3g} /"
          f" {mem['hbm_gib']:.0f} | {mem['arguments_gib']:.3g} |"
          f" {mem['temporaries_gib']:.3g} |"
          f" {_collectives(line['collectives']['per_step'])} |"
          f" {_step_ms(roof)} | {mfu} |"
          f" {line['compile_s']:.0f} |")


def search_row(line: dict) -> str:
  head = (f"| {line.get('config', '')} | {_where(line)} | {_mesh(line)} |"
          f" {line['batch']} | {line.get('beam_size', '')} |"
          f" {line.get('max_decode_len', '')} |")
  if "error" in line:
    return head + f" no: {line['error']} |" + " |" * 5
  mem, collectives = line["memory"], line["collectives"]
  return (head + f" {'yes' if mem['fits'] else 'no'} | {mem['peak_gib']:.3g} |"
          f" {line['kv_cache_bytes'] / MiB:.3g} |"
          f" {_collectives(collectives['per_loop_iteration'])} |"
          f" {len(line['loop_copies'])} | {line['compile_s']:.0f} |")


TRAINING_HEADER = (
    "| config | program | topology | mesh d x f x t | batch x len | fits | peak / HBM"
    " GiB | args GiB | temps GiB | collectives per step (count x MiB) | roofline ms"
    " (bound) | MFU | compile s |\n" + "|---" * 13 + "|")
SEARCH_HEADER = (
    "| config | topology | mesh d x f x t | batch | beam | max len | fits | peak GiB |"
    " KV cache MiB (all chips) | collectives per loop iteration (count x MiB) |"
    " copies >= 1 MiB in loop | compile s |\n" + "|---" * 12 + "|")


def render(paths: list[str]) -> str:
  """The training table and the beam-search table of the lines in `paths`."""
  lines = [json.loads(l) for p in paths for l in open(p, encoding="utf-8") if l.strip()]
  training = [training_row(l) for l in lines if l["program"] != "beam_search"]
  search = [search_row(l) for l in lines if l["program"] == "beam_search"]
  parts = []
  if training:
    parts.append("\n".join([TRAINING_HEADER, *training]))
  if search:
    parts.append("\n".join([SEARCH_HEADER, *search]))
  return "\n\n".join(parts)


if __name__ == "__main__":
  print(render(sys.argv[1:]))
