"""What a decoded batch becomes: n-best `Hypothesis` lists in `Translation`s.

A hypothesis carries its text and ids, its score and, when asked for, its per-token
scores, alternatives, target prefix length and alignment (docs/decoding.md);
`Translation.line` writes the output line infer.py prints.
"""
from collections.abc import Sequence
import dataclasses

import numpy as np

from data import tokenizer as tokenizer_lib
from inference import text_io
from models import alignment as alignment_lib


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  text: str
  score: float  # Sum of log-probabilities over the length penalty.
  ids: tuple[int, ...] = ()  # Target token ids, EOS and padding left out.
  # Log-probability of each token, EOS included when the hypothesis ends with it
  # (len(ids) + 1 entries; len(ids) when cut at the length limit); their sum over
  # the length penalty of their count is `score`. Empty unless asked for.
  token_scores: tuple[float, ...] = ()
  prefix_len: int = 0  # The first tokens of `ids` that were the given target prefix.
  # Per position (as token_scores), the likeliest (token id, log-probability)
  # pairs there, given the tokens before it. Empty unless asked for.
  alternatives: tuple[tuple[tuple[int, float], ...], ...] = ()
  # (source index, target index) pairs over the model's tokens (models/alignment.py);
  # empty unless asked for. `alignment_text` writes them in the Pharaoh format.
  alignment: tuple[tuple[int, int], ...] = ()

  @property
  def alignment_text(self) -> str:
    return alignment_lib.pharaoh(list(self.alignment))

  @property
  def prefix_score(self) -> float | None:
    """Sum of the prefix tokens' log-probabilities (None without a prefix)."""
    return sum(self.token_scores[:self.prefix_len]) if self.prefix_len else None


@dataclasses.dataclass(frozen=True)
class Translation:
  """One input line's n-best list, best first; empty for an empty line.

  `truncated` says the source was longer than the model's limit and only its first
  tokens were translated.
  """
  nbest: list[Hypothesis]
  truncated: bool = False

  @property
  def text(self) -> str:
    return self.nbest[0].text if self.nbest else ""

  @property
  def score(self) -> float | None:
    return self.nbest[0].score if self.nbest else None

  @property
  def ids(self) -> tuple[int, ...]:
    return self.nbest[0].ids if self.nbest else ()

  def line(self, nbest: int = 1, token_scores: bool = False) -> str:
    """The output line: the best text, or `hyp1<TAB>score1<TAB>hyp2...` (nbest > 1).

    With `token_scores` every hypothesis is `hyp<TAB>score<TAB>token scores`
    (space-separated), also for nbest 1, followed by `<TAB>alternatives` and
    `<TAB>alignment` (Pharaoh i-j pairs) when the hypotheses have them.
    """
    token_scores = token_scores or any(h.alternatives for h in self.nbest)
    aligned = any(h.alignment for h in self.nbest)
    if nbest == 1 and not (token_scores or aligned):
      return self.text

    def fields(h: Hypothesis) -> str:
      extra = ("\t" + " ".join(f"{x:.4f}" for x in h.token_scores)
               if token_scores else "")
      if h.alternatives:  # id:logp,id:logp per position, positions space-separated.
        extra += "\t" + " ".join(",".join(f"{i}:{x:.4f}" for i, x in position)
                                 for position in h.alternatives)
      if aligned:
        extra += "\t" + h.alignment_text
      return f"{h.text}\t{h.score:.4f}{extra}"
    return "\t".join(fields(h) for h in self.nbest[:nbest])


def _ids(row: np.ndarray) -> tuple[int, ...]:
  """A decoded row's token ids up to EOS, padding left out."""
  ids = row.tolist()
  if tokenizer_lib.EOS_ID in ids:
    ids = ids[:ids.index(tokenizer_lib.EOS_ID)]
  return tuple(i for i in ids if i != tokenizer_lib.PAD_ID)


def _token_scores(row: np.ndarray, values: np.ndarray | None) -> tuple[float, ...]:
  """The per-token log-probabilities of a decoded row, up to its length."""
  if values is None:
    return ()
  return tuple(float(x) for x in values[:int((row != tokenizer_lib.PAD_ID).sum())])


def _alternatives(row: np.ndarray, tokens: np.ndarray | None,
                  scores: np.ndarray | None) -> tuple:
  """Per position of a decoded row, its (token id, log-probability) alternatives."""
  if tokens is None:
    return ()
  n = int((row != tokenizer_lib.PAD_ID).sum())
  return tuple(tuple((int(i), float(x)) for i, x in zip(tokens[p], scores[p]))
               for p in range(n))


def hypotheses(tokens: np.ndarray, scores: np.ndarray, tokenizer, count: int,
               token_scores: np.ndarray | None = None,
               prefix_lens: Sequence[int] | None = None,
               alternatives: tuple[np.ndarray, np.ndarray] | None = None
               ) -> list[list[Hypothesis]]:
  """The n-best lists of the first `count` rows of a decoded batch.

  tokens [rows, nbest, out_len], scores [rows, nbest], token_scores (optional)
  [rows, nbest, out_len], prefix_lens (optional) per row, alternatives (optional)
  tokens and scores [rows, nbest, out_len, n]; texts hold no line breakers.
  """
  def one(r, k):
    row = tokens[r, k]
    prefix = 0 if prefix_lens is None else min(prefix_lens[r],
                                              int((row != tokenizer_lib.PAD_ID).sum()))
    alt = (None, None) if alternatives is None else (alternatives[0][r, k],
                                                     alternatives[1][r, k])
    return Hypothesis(text_io.one_line(tokenizer.decode(row)), float(scores[r, k]),
                      _ids(row), _token_scores(row, None if token_scores is None
                                               else token_scores[r, k]), prefix,
                      _alternatives(row, *alt))
  return [[one(r, k) for k in range(tokens.shape[1])] for r in range(count)]
