"""A vocabulary shortlist: the target tokens a sentence's translation may use.

CTranslate2's vocabulary map (`use_vmap`) and Marian's lexical shortlist: most of
the output projection's columns are tokens a given sentence will never emit. A
sentence's candidates are the `always` most frequent target tokens plus, for each of
its source tokens, the `per_source` target tokens that co-occur with it most often in
the training pairs; the decoder then projects onto those columns only (models/
decode_state.py, `OutputTable.restrict`): a batch projects onto the union of its
sentences' candidates, [rows, S] logits instead of [rows, vocab], and each sentence
ranks its own candidates only, so its translation does not depend on its batch
mates. Probabilities are normalised over the candidates, so
scores are not the full model's: the shortlist is off unless asked for
(`--use_shortlist`), and `shortlist.py` prints how many reference tokens it covers.

  WORKDIR/shortlist.npz   always [K] int32, per_source [vocab, N] int32 (-1: none)
"""
from collections.abc import Iterable, Sequence
import dataclasses
import io
import os

from etils import epath
import numpy as np

from data import tokenizer as tokenizer_lib
from storage import files

FILE = "shortlist.npz"
MIN_WIDTH = 256  # Candidate rows are padded to a power of two from here.


@dataclasses.dataclass(frozen=True)
class Shortlist:
  """The candidates of every source token; see the module docstring."""
  always: np.ndarray  # [K] int32 target ids every sentence may emit (pad, EOS too)
  per_source: np.ndarray  # [vocab, N] int32 target ids per source id; -1: none
  min_width: int = MIN_WIDTH  # Narrowest candidate rows (`rows`); not stored.

  @property
  def vocab_size(self) -> int:
    return self.per_source.shape[0]

  def candidates(self, source_ids: Sequence[int]) -> np.ndarray:
    """The sorted target ids one sentence (its non-pad source ids) may emit."""
    ids = np.asarray(source_ids, np.int64)
    ids = ids[(ids != tokenizer_lib.PAD_ID) & (ids >= 0) & (ids < self.vocab_size)]
    extra = self.per_source[ids].ravel()
    return np.union1d(self.always, extra[extra >= 0]).astype(np.int32)

  def batch(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids [S] int32, allowed [rows, S] bool) of a batch inputs [rows, src_len].

    ids: the union of the rows' candidates, ascending, then -1 padding to S, the
    next power of two from min_width (few shapes to compile); from the vocabulary
    size on, the whole vocabulary in order. allowed[r, j]: ids[j] is a candidate of
    row r, so each sentence ranks its own candidates only, whatever its batch mates:
    the union only shares one projection among them.
    """
    sets = [self.candidates(row) for row in inputs]
    union = np.unique(np.concatenate(sets)) if sets else self.always
    width = max(self.min_width, 1 << (len(union) - 1).bit_length())
    if width >= self.vocab_size:
      ids = np.arange(self.vocab_size, dtype=np.int32)
    else:
      ids = np.full(width, -1, np.int32)
      ids[:len(union)] = union
    allowed = np.stack([np.isin(ids, s) for s in sets]) if sets else np.zeros(
        (0, len(ids)), bool)
    return ids, allowed & (ids >= 0)


def build(pairs: Iterable[tuple[Sequence[int], Sequence[int]]], vocab_size: int, *,
          always: int = 200, per_source: int = 20) -> Shortlist:
  """The shortlist of (source ids, target ids) training pairs.

  `always`: the most frequent target tokens (pad and EOS are added); `per_source`:
  per source token, the target tokens (outside `always`) found in the most pairs
  with it, ties to the lower id.
  """
  target_counts = np.zeros(vocab_size, np.int64)
  keys = []
  for src, tgt in pairs:
    s = np.unique(np.asarray(src, np.int64))
    t = np.unique(np.asarray(tgt, np.int64))
    np.add.at(target_counts, t, 1)
    keys.append((s[:, None] * vocab_size + t[None, :]).ravel())
  frequent = np.argsort(-target_counts, kind="stable")[:always]
  common = np.union1d(frequent[target_counts[frequent] > 0],
                      [tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID]).astype(np.int32)
  table = np.full((vocab_size, per_source), -1, np.int32)
  if keys:
    pair_keys, counts = np.unique(np.concatenate(keys), return_counts=True)
    src, tgt = pair_keys // vocab_size, pair_keys % vocab_size
    keep = ~np.isin(tgt, common)
    src, tgt, counts = src[keep], tgt[keep], counts[keep]
    order = np.lexsort((tgt, -counts, src))  # By source, then most pairs, then id.
    src, tgt = src[order], tgt[order]
    first = np.searchsorted(src, src, side="left")  # Rank within each source id.
    rank = np.arange(len(src)) - first
    kept = rank < per_source
    table[src[kept], rank[kept]] = tgt[kept]
  return Shortlist(always=common, per_source=table)


def coverage(shortlist: Shortlist,
             pairs: Iterable[tuple[Sequence[int], Sequence[int]]]) -> dict:
  """How well the shortlist covers references: the share of target tokens (EOS
  included) among their sentence's candidates, and the candidates per sentence."""
  covered = total = 0
  widths = []
  for src, tgt in pairs:
    candidates = shortlist.candidates(src)
    target = np.append(np.asarray(tgt, np.int64), tokenizer_lib.EOS_ID)
    covered += int(np.isin(target, candidates).sum())
    total += len(target)
    widths.append(len(candidates))
  return {"token_coverage": covered / max(total, 1),
          "candidates_mean": float(np.mean(widths)) if widths else 0.0,
          "candidates_max": int(max(widths, default=0)),
          "vocab_size": shortlist.vocab_size}


def path(workdir) -> epath.Path:
  return epath.Path(workdir) / FILE


def save(shortlist: Shortlist, workdir) -> epath.Path:
  """Writes WORKDIR/shortlist.npz whole (a reader never sees part of it)."""
  buffer = io.BytesIO()
  np.savez(buffer, always=shortlist.always, per_source=shortlist.per_source)
  target = path(workdir)
  files.atomic_write(target, buffer.getvalue())
  return target


def load(workdir_or_file) -> Shortlist:
  """The shortlist of a workdir (or an .npz path); FileNotFoundError naming the fix."""
  target = epath.Path(workdir_or_file)
  if not os.fspath(target).endswith(".npz"):
    target = target / FILE
  if not target.exists():
    raise FileNotFoundError(f"{target} does not exist: build it with"
                            f" `python shortlist.py --workdir={target.parent}`.")
  with target.open("rb") as f:
    arrays = np.load(io.BytesIO(f.read()))
    return Shortlist(always=arrays["always"].astype(np.int32),
                     per_source=arrays["per_source"].astype(np.int32))
