"""Translates with an ONNX model directory (export.py --format=onnx), using only
onnxruntime, numpy and sentencepiece: no module of the training codebase, no jax.

  python runners/onnx.py MODEL_DIR < input.en > output.fr

One output line per input line, as `infer.py --mode=translate` writes them; lines are
cut to the longest compiled source length (the manifest's programs). Each program is
the whole beam search, loop included; a session is opened for a shape when a batch
first needs it.
"""
import json
import pathlib
import re
import sys

import numpy as np
import onnxruntime
import sentencepiece

# Whitespace, BOM and zero-width characters at either end: a line of only these is
# empty and gets an empty translation.
_EDGES = re.compile(r"^[\s\ufeff\u200b\u200c\u200d\u2060]+"
                    r"|[\s\ufeff\u200b\u200c\u200d\u2060]+$")


class Model:
  """The tokenizer, the manifest and an onnxruntime session per program shape."""

  def __init__(self, directory):
    self.dir = pathlib.Path(directory) / "onnx"
    self.manifest = json.loads((self.dir / "manifest.json").read_text())
    self.sp = sentencepiece.SentencePieceProcessor(
        model_proto=(pathlib.Path(directory) / "spm.model").read_bytes())
    self.files = {(p["rows"], p["src_len"]): p["file"] for p in self.manifest["programs"]}
    self.sessions = {}

  def _search(self, rows, length, batch):
    if (rows, length) not in self.sessions:
      options = onnxruntime.SessionOptions()
      options.log_severity_level = 3  # Errors only.
      self.sessions[rows, length] = onnxruntime.InferenceSession(
          str(self.dir / self.files[rows, length]), options,
          providers=["CPUExecutionProvider"])
    inputs = np.full((rows, length), self.manifest["pad_id"], np.int32)
    for r, ids in enumerate(batch):
      inputs[r, :len(ids)] = ids
    decode = self.manifest["decode"]
    names = self.manifest["inputs"]  # inputs, alpha, max_len_a, max_len_b
    feed = {names[0]: inputs, **{n: np.array(decode[n], np.float32) for n in names[1:]}}
    tokens, _ = self.sessions[rows, length].run(None, feed)
    return tokens

  def translate(self, lines):
    eos, pad = self.manifest["eos_id"], self.manifest["pad_id"]
    lengths = sorted({length for _, length in self.files})
    ids = [self.sp.encode(t)[:lengths[-1] - 1] + [eos]
           if (t := _EDGES.sub("", line)) else [] for line in lines]
    out = [""] * len(lines)
    todo = sorted((i for i in range(len(lines)) if ids[i]), key=lambda i: len(ids[i]))
    while todo:  # Shortest first: the smallest compiled shape that holds them.
      length = min(l for l in lengths if l >= len(ids[todo[0]]))
      fits = [i for i in todo if len(ids[i]) <= length]
      sizes = sorted(r for r, l in self.files if l == length)
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
