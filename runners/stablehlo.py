"""Translates with a StableHLO model directory (export.py --format=stablehlo), using
only jax, numpy and sentencepiece: no module of the training codebase.

  python runners/stablehlo.py MODEL_DIR < input.en > output.fr

One output line per input line, as `infer.py --mode=translate` writes them; lines are
cut to the longest compiled source length (the manifest's programs).
"""
import json
import pathlib
import re
import sys

import jax
import numpy as np
import sentencepiece

# Whitespace, BOM and zero-width characters at either end: a line of only these is
# empty and gets an empty translation.
_EDGES = re.compile(r"^[\s\ufeff\u200b\u200c\u200d\u2060]+"
                    r"|[\s\ufeff\u200b\u200c\u200d\u2060]+$")


class Model:
  """The parameters, the tokenizer and the deserialized search programs."""

  def __init__(self, directory):
    d = pathlib.Path(directory)
    self.manifest = json.loads((d / "stablehlo" / "manifest.json").read_text())
    with np.load(d / "params.npz") as stored:
      self.params = [jax.device_put(stored[n]) for n in self.manifest["param_names"]]
    self.sp = sentencepiece.SentencePieceProcessor(
        model_proto=(d / "spm.model").read_bytes())
    self.programs = {(p["rows"], p["src_len"]): jax.export.deserialize(bytearray(
        (d / "stablehlo" / p["file"]).read_bytes())) for p in self.manifest["programs"]}

  def _search(self, rows, length, batch):
    inputs = np.full((rows, length), self.manifest["pad_id"], np.int32)
    for r, ids in enumerate(batch):
      inputs[r, :len(ids)] = ids
    decode = self.manifest["decode"]
    tokens, _ = self.programs[rows, length].call(
        self.params, inputs, *(np.float32(decode[k])
                               for k in ("alpha", "max_len_a", "max_len_b")))
    return np.asarray(tokens)

  def translate(self, lines):
    eos, pad = self.manifest["eos_id"], self.manifest["pad_id"]
    lengths = sorted({length for _, length in self.programs})
    ids = [self.sp.encode(t)[:lengths[-1] - 1] + [eos]
           if (t := _EDGES.sub("", line)) else [] for line in lines]
    out = [""] * len(lines)
    todo = sorted((i for i in range(len(lines)) if ids[i]), key=lambda i: len(ids[i]))
    while todo:  # Shortest first: the smallest compiled shape that holds them.
      length = min(l for l in lengths if l >= len(ids[todo[0]]))
      fits = [i for i in todo if len(ids[i]) <= length]
      sizes = sorted(r for r, l in self.programs if l == length)
      rows = min((r for r in sizes if r >= len(fits)), default=sizes[-1])
      batch, todo = fits[:rows], todo[len(fits[:rows]):]
      for i, row in zip(batch, self._search(rows, length, [ids[i] for i in batch])):
        row = [int(t) for t in row]
        row = row[:row.index(eos)] if eos in row else row
        out[i] = re.sub(r"[\n\r\t]", " ", self.sp.decode([t for t in row if t != pad]))
    return out


if __name__ == "__main__":
  model = Model(sys.argv[1])
  data = sys.stdin.buffer.read().split(b"\n")
  lines = [l.rstrip(b"\r").decode("utf-8", errors="replace")
           for l in (data[:-1] if data[-1] == b"" else data)]
  sys.stdout.write("".join(t + "\n" for t in model.translate(lines)))
