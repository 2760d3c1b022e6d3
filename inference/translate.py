"""Text in, text out: clean input lines, batch by length, decode, restore the order.

Every input line gives exactly one output line, in input order: empty or whitespace
lines give empty lines without reaching the model, invalid UTF-8 is replaced (with a
warning), and over-long lines are truncated to the model's limit (with a warning).
Sentences are sorted by length into a few bucket lengths and batched by a token
budget, so the decoder compiles for a handful of shapes only.
"""
from collections.abc import Callable, Iterable, Sequence
import dataclasses
import itertools
import math
import sys

from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from data import tokenizer as tokenizer_lib
from models import decoding
from parallel import sharding

BUCKETS = (8, 16, 32, 64, 128, 256, 512)

# decode(inputs [batch, src_len] int32) -> (tokens [batch, nbest, out_len],
#                                           scores [batch, nbest])
DecodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Source:
  """One input line, tokenized; `ids` is empty for a line the model need not see."""
  line: int  # 1-based, for messages.
  ids: list[int]


def read_lines(data: bytes, name: str) -> list[str]:
  """Splits `data` into lines; invalid UTF-8 becomes U+FFFD with a warning per line."""
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":  # A final newline ends the last line; no extra line.
    lines.pop()
  texts = []
  for number, raw in enumerate(lines, 1):
    raw = raw.rstrip(b"\r")
    try:
      texts.append(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      print(f"{name}:{number}: invalid UTF-8 ({e.reason} at byte {e.start}); replaced"
            " with U+FFFD. Re-encode the file as UTF-8 to avoid this.", file=sys.stderr)
      texts.append(raw.decode("utf-8", errors="replace"))
  return texts


def tokenize(texts: Sequence[str], tokenizer, max_len: int, name: str) -> list[Source]:
  """Ids + eos per line, cut to `max_len` tokens (warning names the line)."""
  sources = []
  for number, text in enumerate(texts, 1):
    if not text.strip():
      sources.append(Source(number, []))
      continue
    ids = tokenizer.encode(text.strip()) + [tokenizer_lib.EOS_ID]
    if len(ids) > max_len:
      print(f"{name}:{number}: {len(ids)} tokens, more than the model's limit of"
            f" {max_len}; translating the first {max_len - 1}. Split the line to"
            " translate all of it.", file=sys.stderr)
      ids = ids[:max_len - 1] + [tokenizer_lib.EOS_ID]
    sources.append(Source(number, ids))
  return sources


def _bucket(length: int) -> int:
  return next((b for b in BUCKETS if b >= length), length)


def batches(sources: Sequence[Source], batch_tokens: int
            ) -> Iterable[tuple[list[Source], np.ndarray]]:
  """(sources, inputs [rows, bucket]) batches of similar length within `batch_tokens`.

  A bucket's full batches have batch_tokens // bucket rows; its last, partial batch is
  padded to a power of two rows, so few distinct shapes are compiled.
  """
  todo = sorted((s for s in sources if s.ids), key=lambda s: len(s.ids))
  for length, group in itertools.groupby(todo, key=lambda s: _bucket(len(s.ids))):
    group = list(group)
    per_batch = max(1, batch_tokens // length)
    for start in range(0, len(group), per_batch):
      take = group[start:start + per_batch]
      rows = min(per_batch, 1 << (len(take) - 1).bit_length())
      inputs = np.zeros((rows, length), np.int32)  # Padding rows are all pad.
      for r, source in enumerate(take):
        inputs[r, :len(source.ids)] = source.ids
      yield take, inputs


def translate(texts: Sequence[str], tokenizer, decode: DecodeFn, *, max_len: int,
              batch_tokens: int, nbest: int = 1, name: str = "<input>",
              progress: bool = False) -> list[str]:
  """One output line per text. With nbest > 1: `hyp1\\tscore1\\thyp2\\tscore2 ...`."""
  sources = tokenize(texts, tokenizer, max_len, name)
  outputs = [""] * len(sources)
  work = list(batches(sources, batch_tokens))
  for batch, inputs in tqdm.tqdm(work, disable=not progress, file=sys.stderr,
                                 unit="batch"):
    tokens, scores = decode(inputs)  # [rows, nbest, out_len], [rows, nbest]
    for r, source in enumerate(batch):
      hyps = [tokenizer.decode(tokens[r, k]) for k in range(nbest)]
      outputs[source.line - 1] = hyps[0] if nbest == 1 else "\t".join(
          f"{h}\t{float(scores[r, k]):.4f}" for k, h in enumerate(hyps))
  return outputs


def make_decoder(graphdef, state, mesh, *, beam_size: int, alpha: float,
                 max_len_a: float, max_len_b: float, nbest: int, max_len: int
                 ) -> DecodeFn:
  """A DecodeFn running the jitted beam search with the batch split over the mesh.

  The KV cache length is static per source bucket: min(max_len, ceil(a * bucket + b)).
  alpha, a and b are traced, so a new alpha reuses the compiled search.
  """
  def decode(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    max_decode_len = min(max_len, math.ceil(max_len_a * inputs.shape[1] + max_len_b))
    # Rows split over ('data', 'fsdp') as far as the row count divides. Every process
    # holds the same `inputs` and gets back all rows (multi-host evaluation).
    spec = sharding.logical_to_spec(("batch", "length"), shape=inputs.shape, mesh=mesh)
    global_inputs = jax.make_array_from_callback(
        inputs.shape, jax.sharding.NamedSharding(mesh, spec), lambda i: inputs[i])
    with sharding.use_mesh(mesh):
      out = decoding.beam_search_jit(
          graphdef, state, global_inputs, alpha, max_len_a, max_len_b,
          beam_size=beam_size, max_decode_len=max_decode_len, nbest=nbest)
    return (multihost_utils.process_allgather(out.tokens, tiled=True),
            multihost_utils.process_allgather(out.scores, tiled=True))
  return decode


def make_translator(workdir: str, mesh, *, step: int | None = None,
                    checkpoint_dir: str | None = None, dtype: str | None = None,
                    beam_size: int = 4, alpha: float = 0.6, max_len_a: float = 1.5,
                    max_len_b: float = 10.0, nbest: int = 1, batch_tokens: int = 4096
                    ) -> tuple[Callable[[Sequence[str], str, bool], list[str]], int]:
  """(run(texts, name, progress) -> output lines, checkpoint step) for a workdir.

  Restores the parameters of `step` (default: the latest) from WORKDIR/checkpoints or
  `checkpoint_dir` (e.g. averaged ones), cast to `dtype`, and loads WORKDIR/spm.model.
  """
  from inference import restore  # pylint: disable=g-import-not-at-top,import-outside-toplevel  (grain)
  model = restore.restore_params(workdir, mesh, step=step,
                                 checkpoint_dir=checkpoint_dir, dtype=dtype)
  graphdef, state = nnx.split(nnx.merge(model.graphdef, model.params, model.rest))
  max_len = model.model_config.max_len
  decode = make_decoder(graphdef, state, mesh, beam_size=beam_size, alpha=alpha,
                        max_len_a=max_len_a, max_len_b=max_len_b, nbest=nbest,
                        max_len=max_len)
  tokenizer = restore.load_tokenizer(workdir)

  def run(texts: Sequence[str], name: str, progress: bool) -> list[str]:
    return translate(texts, tokenizer, decode, max_len=max_len,
                     batch_tokens=batch_tokens, nbest=nbest, name=name,
                     progress=progress)
  return run, model.step
