"""Beam search as one XLA loop, independent of the model (as in T5X's decoding).

`search` takes a step function, `(tokens [rows], step, cache) -> (logits [rows,
vocab], cache)`, and the cache pytree it threads; rows are batch * beam, the beams of
sentence i being rows i * beam ... i * beam + beam - 1. After each step the cache
follows the surviving hypotheses (`reorder_cache`: the cache's own `reorder`, or a
tree map over its leaves), so any model (or a stub returning fixed logits, as the
tests do) plugs in.

Search rules, per sentence:
- Each step expands every live hypothesis by every token except pad (and EOS at
  the first step: no translation is empty, CTranslate2's min_decoding_length=1;
  `SearchOptions.min_len` moves that bar) and keeps the `beam_size` best
  candidates by log-probability. Candidates ending
  in EOS, or reaching the sentence's max length, move to the finished set (the
  `beam_size` best by length-normalised score); the others stay live. So beam 1 is
  exactly greedy search, whatever `alpha` is.
- Score = sum of log-probabilities / ((5 + length) / 6) ** alpha (GNMT). Length counts
  the EOS token when the hypothesis ends with one; a hypothesis cut at the max length
  has no EOS. `lengths == (tokens != pad_id).sum(-1)`.
- The sentence stops once its finished set is full and no live hypothesis can beat
  the worst finished one (`live_score_bound`), or when nothing is live. Its state is
  then frozen, so the result does not depend on how long its batch mates run.

Optional rules (models/search_rules.py, `SearchOptions`) bar EOS for longer, bar
tokens that repeat an n-gram, keep per-token log-probabilities, or force each
sentence's first tokens (a target prefix: while it lasts, the one live hypothesis
takes its next token, scored by the model like any other), or rank each sentence's
shortlisted tokens only (the step's logits are then over those, normalised over
them); each is traced only when it is on.
"""
from collections.abc import Callable
import math
from typing import Any, NamedTuple

import flax
import jax
from jax import lax
import jax.numpy as jnp

from models.search_rules import (SearchOptions, eos_barred, force, forced_tokens,
                                 per_token_values, per_token_zeros,
                                 repeated_ngram_mask, shortlisted_tokens)
from parallel.sharding import logical_to_spec, with_logical_constraint

Array = jax.Array
Cache = Any  # A pytree with batch * beam rows first in its leaves, or a `reorder` method.
# step_fn(tokens [rows] int32, step [] int32, cache) -> (logits [rows, vocab] float32,
#                                                       cache)
StepFn = Callable[[Array, Array, Cache], tuple[Array, Cache]]
NEG_INF = -jnp.inf
# Narrower rows (beams, finished sets) take lax.top_k as they are.
_MIN_BLOCKED_WIDTH = 1024


class Decoded(NamedTuple):
  """Beam-search output: n-best hypotheses per sentence, best first."""
  tokens: Array  # [batch, nbest, max_decode_len] int32, EOS kept, pad after it
  scores: Array  # [batch, nbest] float32 length-normalised; -inf for missing ones
  lengths: Array  # [batch, nbest] int32 tokens including EOS (0 for missing ones)
  steps: Array  # [] int32 decoder steps the loop ran (early stopping shows here)
  # [batch, nbest, max_decode_len] float32 log-probability of each token (0 after
  # the hypothesis); only with SearchOptions.token_scores.
  token_scores: Array | None = None
  # [batch, nbest, max_decode_len, alternatives] int32 / float32: at each position,
  # the likeliest tokens (pad left out) and their log-probabilities given the
  # hypothesis's tokens before it; only with SearchOptions.alternatives.
  alternative_tokens: Array | None = None
  alternative_scores: Array | None = None


@flax.struct.dataclass
class BeamState:
  """The `lax.while_loop` carry. Empty slots have log-probability/score -inf."""
  step: Array  # [] int32: tokens decoded so far = position written next
  alive_seqs: Array  # [batch, beam, max_decode_len] int32
  alive_logp: Array  # [batch, beam] float32 sum of log-probabilities
  finished_seqs: Array  # [batch, beam, max_decode_len] int32
  finished_scores: Array  # [batch, beam] float32, sorted best first
  finished_lens: Array  # [batch, beam] int32
  cache: Cache  # the step function's state, rows [batch * beam]
  # Per-token values of the live and the finished hypotheses, by `Decoded` field
  # name ([batch, beam, max_decode_len, ...]: token_scores, alternative_*); None
  # unless SearchOptions asks for some.
  alive_per_token: dict[str, Array] | None = None
  finished_per_token: dict[str, Array] | None = None


def length_penalty(length: Array, alpha: Array) -> Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def live_score_bound(alive_logp: Array, length: Array, max_len: Array,
                     alpha: Array) -> Array:
  """[batch] upper bound on the score any live hypothesis can still reach.

  alive_logp [batch, beam] (-inf for empty slots) of hypotheses with `length` tokens;
  max_len [batch]. A hypothesis's final log-probability is at most its current one
  s <= 0 and its final length L lies in (length, max_len]. As the penalty is
  monotone in L (up or down by the sign of alpha), s / penalty(L) is at most s over
  the larger penalty of the two ends. With alpha > 0 that is the max length: bounding
  with the next length instead would stop too early.
  """
  largest_penalty = jnp.maximum(length_penalty(length + 1, alpha),
                                length_penalty(max_len, alpha))  # [batch]
  return jnp.max(alive_logp, axis=1) / largest_penalty


def top_k_block_size(n: int, k: int) -> int | None:
  """Block width of `top_k`'s blocked path over rows of n entries; None: lax.top_k.

  The blocked path reads the row once for block maxima, then ranks n / block maxima
  and k * block candidates: a block of about sqrt(n / k) balances the two. It must
  divide n; rows narrower than _MIN_BLOCKED_WIDTH, or with no divisor within 2x of
  that width, take lax.top_k.
  """
  if n < _MIN_BLOCKED_WIDTH:
    return None
  target = math.sqrt(n / k)
  widths = [d for d in range(max(2, int(target / 2)), int(2 * target) + 1)
            if n % d == 0 and n // d >= k]
  return min(widths, key=lambda d: abs(math.log(d / target)), default=None)


def _blocked_top_k(x: Array, k: int, block: int) -> tuple[Array, Array]:
  """Exactly lax.top_k(x, k) over the last axis, ties included, via block maxima.

  Each of the k best entries lies in one of the k blocks with the best maxima (a
  block outside those has k better entries), so only those k * block entries are
  ranked. The blocks are gathered in index order, so equal values resolve to the
  lower index, as in lax.top_k. It reads the row once instead of ranking all of it
  (bench/decode_trace.py measures both).
  """
  *lead, n = x.shape
  blocks = x.reshape(*lead, n // block, block)
  _, best = lax.top_k(blocks.max(axis=-1), k)  # [..., k] block indices
  best = jnp.sort(best, axis=-1)
  candidates = jnp.take_along_axis(blocks, best[..., None], axis=-2)  # [..., k, block]
  values, position = lax.top_k(candidates.reshape(*lead, k * block), k)
  indices = (jnp.take_along_axis(best, position // block, axis=-1) * block
             + position % block)
  return values, indices


def top_k(x: Array, k: int) -> tuple[Array, Array]:
  """lax.top_k of x [batch, ..., n] over its last axis, on each batch shard.

  Rows as wide as a vocabulary take `_blocked_top_k` (same result, faster). The
  partitioner does not split XLA's TopK by rows: it would gather the whole candidate
  array onto every device at every step, so sharded rows run in a shard_map.
  """
  block = top_k_block_size(x.shape[-1], k)
  if block is None:
    local = lambda y: tuple(lax.top_k(y, k))
  else:
    local = lambda y: _blocked_top_k(y, k, block)
  mesh = jax.sharding.get_abstract_mesh()
  names = ("batch",) + (None,) * (x.ndim - 1)
  spec = None if mesh.empty else logical_to_spec(names, shape=x.shape, mesh=mesh)
  if spec is None or spec[0] is None:
    return local(x)
  return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=(spec, spec))(x)


def _gather_beams(x: Array, idx: Array) -> Array:
  """x [batch, n, ...] -> [batch, k, ...] picked by idx [batch, k] per sentence.

  A batched gather (batch is a gather batch dimension), so a batch-sharded x stays on
  its shard.
  """
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def reorder_cache(cache: Cache, parent: Array) -> Cache:
  """The cache after hypotheses move to their parents [batch, beam].

  A cache that defines `reorder(parent)` moves itself (the Transformer's moves only
  its small ancestry table, see `models.decode_state.DecodeCache`). Otherwise every
  leaf with batch * beam rows is gathered to follow its hypotheses' parents, a copy
  of the whole cache per step. Skipped for beam 1, where the parent is always the row
  itself.
  """
  if parent.shape[1] == 1:
    return cache
  if hasattr(cache, "reorder"):
    return cache.reorder(parent)
  batch, beam = parent.shape

  def move(c: Array) -> Array:
    if c.ndim == 0 or c.shape[0] != batch * beam:
      return c  # E.g. a step counter.
    c = _gather_beams(c.reshape((batch, beam) + c.shape[1:]), parent)
    c = c.reshape((batch * beam,) + c.shape[2:])
    return with_logical_constraint(c, ("batch",) + (None,) * (c.ndim - 1))

  return jax.tree.map(move, cache)


def _step(step_fn: StepFn, state: BeamState, max_len: Array, alpha: Array,
          eos_id: int, pad_id: int, suppress_eos: bool,
          options: SearchOptions = SearchOptions()) -> BeamState:
  """One model step for every live hypothesis, then the beam bookkeeping."""
  batch, beam = state.alive_seqs.shape[:2]
  t = state.step
  # Decoder input: the token at t - 1, the start token (pad) at t = 0.
  prev = lax.dynamic_index_in_dim(state.alive_seqs, jnp.maximum(t - 1, 0), axis=2,
                                  keepdims=False)  # [batch, beam]
  prev = jnp.where(t == 0, pad_id, prev)
  logits, cache = step_fn(prev.reshape(-1), t, state.cache)  # [batch * beam, vocab]
  logits = logits.reshape(batch, beam, -1)
  barred = None
  if options.no_repeat_ngram_size:
    barred = repeated_ngram_mask(state.alive_seqs, t, options.no_repeat_ngram_size,
                                 logits.shape[-1])  # [batch, beam, vocab]
  forced = None if options.prefix is None else forced_tokens(options.prefix, t)
  # Named scopes label the ops in profiles (bench/decode_trace.py).
  with jax.named_scope("top_k"):
    top_logp, parent, token, per_token = _best_expansions(
        logits, state.alive_logp, eos_id, pad_id,
        suppress_eos | eos_barred(t, options.min_len), barred, options,
        forced)  # [batch, beam] each
  with jax.named_scope("beam_bookkeeping"):
    state = _advance(state, top_logp, parent, token, max_len, alpha, eos_id,
                     per_token)
  with jax.named_scope("cache_reorder"):
    return state.replace(cache=reorder_cache(cache, parent))


def _best_expansions(logits: Array, alive_logp: Array, eos_id: int, pad_id: int,
                     bar_eos: Array | bool, barred: Array | None = None,
                     options: SearchOptions = SearchOptions(),
                     forced: Array | None = None
                     ) -> tuple[Array, Array, Array, dict | None]:
  """The beam best (log-probability, parent, token) [batch, beam] of each sentence,
  and the per-token values `options` asks for (`per_token_values`) or None.

  logits [batch, beam, vocab] of the live hypotheses, whose log-probabilities are
  alive_logp [batch, beam]; EOS is not a candidate where `bar_eos` (traced) is true,
  nor a token where `barred` [batch, beam, vocab] (0 or -inf, added) is -inf.
  A sentence with a `forced` [batch] token (pad: none) gets that token alone.
  """
  batch, beam, vocab = logits.shape
  # Exact two-stage top-k: the beam best of beam * vocab candidates are among each
  # hypothesis's beam best tokens. Ties resolve as in one top-k over [beam * vocab]
  # (lower parent, then lower token), at a third of its cost. Tokens never emitted
  # are barred after the first stage, which therefore keeps that many more: masking
  # the logits first would copy all of them every step.
  k = min(beam + 2, vocab)  # Room for the pad and EOS among each row's best.
  ranked = logits if barred is None else logits + barred
  row_logits, row_tokens = top_k(ranked, k)  # [batch, beam, k], best first
  if options.shortlist_ids is not None:  # Logits over a shortlist: slots -> ids.
    row_tokens = shortlisted_tokens(options.shortlist_ids, row_tokens, pad_id)
  # log p = logits - logsumexp over the whole vocabulary, shifted by the row's best
  # logit (as jax.nn.logsumexp shifts by the max, which top_k has found; a max over
  # its k values, not a slice: a second slice of XLA's sort keeps it from becoming
  # a TopK call). Pad is never emitted; its probability mass is dropped, not
  # renormalised, so scores stay sums of the model's log-probabilities.
  shift = jnp.max(row_logits, axis=-1, keepdims=True)  # [batch, beam, 1]
  if barred is not None:  # The row's best may be barred: shift by its unbarred max.
    shift = jnp.max(logits, axis=-1, keepdims=True)
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  log_norm = shift + jnp.log(jnp.sum(jnp.exp(logits - shift), axis=-1, keepdims=True))
  is_barred = (row_tokens == pad_id) | ((row_tokens == eos_id) & bar_eos)
  row_logits = jnp.where(is_barred, NEG_INF, row_logits)
  if forced is not None:
    row_logits, row_tokens = force(row_logits, row_tokens, logits, forced, pad_id)
  row_logp = row_logits - log_norm  # [batch, beam, k]
  candidates = alive_logp[..., None] + row_logp
  top_logp, top_idx = top_k(candidates.reshape(batch, beam * k), beam)
  token = jnp.take_along_axis(row_tokens.reshape(batch, beam * k), top_idx, axis=1)
  per_token = per_token_values(options, logits, log_norm, row_logp, top_idx, pad_id)
  return top_logp, top_idx // k, token, per_token


def _advance(state: BeamState, top_logp: Array, parent: Array, token: Array,
             max_len: Array, alpha: Array, eos_id: int,
             per_token: dict | None = None) -> BeamState:
  """Moves the chosen expansions into the live set, or the finished set if they end.

  Everything but the cache, which `reorder_cache` moves. The `per_token` values
  [batch, beam, ...] of the chosen expansions go beside their tokens.
  """
  batch, beam = parent.shape
  seqs = _gather_beams(state.alive_seqs, parent)
  seqs = lax.dynamic_update_index_in_dim(seqs, token, state.step, axis=2)
  length = state.step + 1
  finishing = (token == eos_id) | (length >= max_len[:, None])  # [batch, beam]

  # Finished set: the beam best of old and new, old first so that ties keep it.
  new_scores = jnp.where(finishing, top_logp / length_penalty(length, alpha), NEG_INF)
  all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
  finished_scores, keep = top_k(all_scores, beam)  # [batch, beam]
  all_seqs = jnp.concatenate([state.finished_seqs, seqs], axis=1)
  all_lens = jnp.concatenate(
      [state.finished_lens, jnp.full((batch, beam), length, jnp.int32)], axis=1)
  finished_seqs = _gather_beams(all_seqs, keep)
  finished_lens = _gather_beams(all_lens, keep)
  if per_token is not None:
    alive = jax.tree.map(lambda x, v: lax.dynamic_update_index_in_dim(
        _gather_beams(x, parent), v, state.step, axis=2), state.alive_per_token,
                         per_token)
    state = state.replace(alive_per_token=alive, finished_per_token=jax.tree.map(
        lambda f, a: _gather_beams(jnp.concatenate([f, a], axis=1), keep),
        state.finished_per_token, alive))

  alive_logp = jnp.where(finishing, NEG_INF, top_logp)  # [batch, beam]
  bound = live_score_bound(alive_logp, length, max_len, alpha)  # [batch]
  # Done once no live hypothesis can beat the worst finished one (also when nothing
  # is live: the bound is then -inf).
  done = finished_scores[:, -1] >= bound
  alive_logp = jnp.where(done[:, None], NEG_INF, alive_logp)  # Freezes the sentence.
  return state.replace(step=length, alive_seqs=seqs, alive_logp=alive_logp,
                       finished_seqs=finished_seqs, finished_scores=finished_scores,
                       finished_lens=finished_lens)


def init_state(cache: Cache, *, batch: int, beam_size: int, max_decode_len: int,
               pad_id: int, options: SearchOptions = SearchOptions()) -> BeamState:
  """The state before the first step: beam 0 of each sentence live, nothing finished.

  The per-token values `options` asks for start as zeros.
  """
  beam = beam_size
  seqs = jnp.full((batch, beam, max_decode_len), pad_id, jnp.int32)
  # Only beam 0 is live at first: the others would repeat it.
  alive_logp = jnp.where(jnp.arange(beam) == 0, 0.0, NEG_INF)
  per_token = per_token_zeros(options, (batch, beam, max_decode_len))
  return BeamState(
      step=jnp.zeros((), jnp.int32), alive_seqs=seqs,
      alive_logp=jnp.broadcast_to(alive_logp, (batch, beam)).astype(jnp.float32),
      finished_seqs=seqs, finished_scores=jnp.full((batch, beam), NEG_INF),
      finished_lens=jnp.zeros((batch, beam), jnp.int32), cache=cache,
      alive_per_token=per_token, finished_per_token=per_token)


def live_sentences(state: BeamState) -> Array:
  """[batch] bool: sentences with a live hypothesis, i.e. not yet done."""
  return jnp.any(state.alive_logp > NEG_INF, axis=1)


def run(step_fn: StepFn, state: BeamState, max_len: Array, alpha: Array, *,
        num_steps: int, eos_id: int, pad_id: int, suppress_eos: bool = False,
        stop_at_live: Array | int = 0, options: SearchOptions = SearchOptions()
        ) -> BeamState:
  """Steps until nothing is live, `num_steps` steps are done, or at most
  `stop_at_live` (traced) sentences are live; 0 runs the search to its end.

  Stopping early leaves a state that continues exactly where it stopped: a caller
  may drop the done sentences from it first (`inference/decoder.py` does, so a
  batch costs what its live sentences need).
  """
  def cond(s: BeamState) -> Array:
    live = jnp.sum(live_sentences(s))
    return (s.step < num_steps) & (live > 0) & ((stop_at_live == 0)
                                                | (live > stop_at_live))

  def body(s: BeamState) -> BeamState:
    return _step(step_fn, s, max_len, alpha, eos_id, pad_id, suppress_eos, options)

  return lax.while_loop(cond, body, state)


def result(state: BeamState, nbest: int, pad_id: int) -> Decoded:
  """The n-best of each sentence of a finished (or frozen) state."""
  scores = state.finished_scores[:, :nbest]  # [batch, nbest]
  found = scores > NEG_INF  # Fewer than nbest only with a tiny vocabulary/max length.
  tokens = jnp.where(found[..., None], state.finished_seqs[:, :nbest], pad_id)
  lengths = jnp.where(found, state.finished_lens[:, :nbest], 0)
  per_token = {}
  for name, x in (state.finished_per_token or {}).items():
    x = x[:, :nbest]
    per_token[name] = jnp.where(found.reshape(found.shape + (1,) * (x.ndim - 2)), x,
                                jnp.zeros((), x.dtype))
  return Decoded(tokens=tokens, scores=scores, lengths=lengths, steps=state.step,
                 **per_token)


def search(step_fn: StepFn, cache: Cache, max_len: Array, alpha: Array, *,
           batch: int, beam_size: int, max_decode_len: int, num_steps: int,
           eos_id: int, pad_id: int, nbest: int = 1, suppress_eos: bool = False,
           options: SearchOptions = SearchOptions()) -> Decoded:
  """The n-best of each of `batch` sentences, found by beam search over `step_fn`.

  `cache` has batch * beam_size rows; max_len [batch] is each sentence's output
  limit (EOS included, at most max_decode_len); the loop runs at most `num_steps`
  steps. With `suppress_eos` EOS is never chosen (benchmarks: identical work for
  every decoder). `options`: the optional rules (models/search_rules.py). Call
  inside `jax.jit`.
  """
  if not 1 <= nbest <= beam_size:
    raise ValueError(f"nbest={nbest} must be between 1 and beam_size={beam_size}.")
  state = init_state(cache, batch=batch, beam_size=beam_size,
                     max_decode_len=max_decode_len, pad_id=pad_id,
                     options=options)
  state = run(step_fn, state, max_len, alpha, num_steps=num_steps, eos_id=eos_id,
              pad_id=pad_id, suppress_eos=suppress_eos, options=options)
  return result(state, nbest, pad_id)
