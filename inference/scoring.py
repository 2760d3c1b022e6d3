"""Teacher-forced scoring: the model's log-probability of given translations.

`score` answers "how likely is this French sentence as a translation of that English
one?": for each target token (EOS included) log p(token | source, previous tokens),
and their sum per sentence. Uses: rescoring n-best lists from elsewhere, filtering a
parallel corpus, checking a model against a reference decoder token by token.

Pairs are batched like translation (`bucketing.group`, in `Translator.score`): by
the bucket of the longer side, both sides padded to it, so scoring compiles as few
shapes as decoding.
"""
from collections.abc import Callable, Sequence
import dataclasses

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import bucketing
from inference import decoder as decoder_lib
from parallel.sharding import Partitioner

# score(inputs [rows, length], targets [rows, length]) -> log-probs [rows, length]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Score:
  """One pair's teacher-forced log-probabilities, natural log."""
  score: float  # Sum over the target tokens: log p(target | source).
  ids: tuple[int, ...]  # Target token ids, EOS last.
  token_scores: tuple[float, ...]  # log p of each id given the source and ids before.
  truncated: bool = False  # A side was cut to the model's limit.

  def line(self) -> str:
    """`score<TAB>token scores`, the `infer.py --mode=score` output line."""
    return f"{self.score:.4f}\t" + " ".join(f"{s:.4f}" for s in self.token_scores)


@dataclasses.dataclass
class Pair:
  """One tokenized pair; `line` is 1-based."""
  line: int
  source: list[int]
  target: list[int]
  truncated: bool = False

  @property
  def length(self) -> int:
    return max(len(self.source), len(self.target))


def token_log_probs(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array,
                    targets: jax.Array) -> jax.Array:
  """[rows, length] float32 log p(targets[t] | inputs, targets[:t]); 0 at padding."""
  model = nnx.merge(graphdef, params)
  logits = model(inputs, targets)  # [rows, length, vocab] float32, no dropout.
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None],
                                  axis=-1)[..., 0]
  return jnp.where(targets != model.cfg.pad_id, log_probs, 0.0)


class Scorer:
  """`token_log_probs` jitted under a partitioner's mesh, compiled once per shape."""

  def __init__(self, partitioner: Partitioner):
    self.partitioner = partitioner
    self._score = partitioner.jit(token_log_probs, static_argnums=0)

  def bind(self, graphdef: nnx.GraphDef, params: nnx.State) -> ScoreFn:
    def score(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
      out = self._score(graphdef, params,
                        decoder_lib.global_batch(self.partitioner, inputs),
                        decoder_lib.global_batch(self.partitioner, targets))
      return multihost_utils.process_allgather(out, tiled=True)
    return score


def tokenize(sources: Sequence[str], targets: Sequence[str], tokenizer, max_len: int,
             name: str = "<input>") -> list[Pair]:
  """Pairs of ids + EOS, each side cut to `max_len` tokens (warnings name the line)."""
  if len(sources) != len(targets):
    raise ValueError(f"{len(sources)} sources but {len(targets)} targets; give one"
                     " target per source.")
  src = bucketing.tokenize(sources, tokenizer, max_len, name)
  tgt = bucketing.tokenize(targets, tokenizer, max_len, name)
  eos = [tokenizer_lib.EOS_ID]  # An empty side is scored as EOS alone.
  return [Pair(s.line, s.ids or eos, t.ids or eos, s.truncated or t.truncated)
          for s, t in zip(src, tgt)]


def score_batch(pairs: Sequence[Pair], length: int, rows: int, score_fn: ScoreFn
                ) -> list[Score]:
  """Scores `pairs` (all within `length` tokens) as one [rows, length] batch."""
  log_probs = score_fn(bucketing.pad_batch([p.source for p in pairs], length, rows),
                       bucketing.pad_batch([p.target for p in pairs], length, rows))
  return [Score(float(log_probs[r, :len(p.target)].sum()), tuple(p.target),
                tuple(float(x) for x in log_probs[r, :len(p.target)]), p.truncated)
          for r, p in enumerate(pairs)]

