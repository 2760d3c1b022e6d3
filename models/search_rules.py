"""Optional rules of the beam search (models/search.py), off unless asked for:
a minimum length, no repeated n-grams, per-token scores and alternatives, a target
prefix, a vocabulary shortlist.

`SearchOptions` holds them: traced values (new values reuse the compilation) and
static switches (each setting is a program of its own). Its defaults trace nothing,
so a search without options compiles to the program it always was.
"""
import flax
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -jnp.inf


@flax.struct.dataclass
class SearchOptions:
  """Per-call search rules; None (traced fields) and 0/False (static ones) are off."""
  # [] int32: EOS is barred while fewer tokens than this are decoded. None: the
  # standing rule, EOS barred at the first step only (min_decoding_length 1).
  min_len: Array | None = None
  # Static: a token that would repeat an n-gram of this size already in the
  # hypothesis is barred (0: off).
  no_repeat_ngram_size: int = flax.struct.field(pytree_node=False, default=0)
  # Static: keep each hypothesis's per-token log-probabilities...
  token_scores: bool = flax.struct.field(pytree_node=False, default=False)
  # ...and (static) this many likeliest tokens at each of its positions (0: none).
  alternatives: int = flax.struct.field(pytree_node=False, default=0)
  # [batch, max_decode_len] int32: tokens each output must start with, pad after
  # them (a row of pad: no prefix). None: no sentence has one.
  prefix: Array | None = None
  # A vocabulary shortlist (inference/shortlist.py): [S] int32 the target ids of
  # the step's S logits (-1: padding), and [batch, S] bool the slots each sentence
  # may emit. None: logits over the whole vocabulary.
  shortlist_ids: Array | None = None
  shortlist_allowed: Array | None = None


def per_token_zeros(options: SearchOptions, shape: tuple[int, ...]
                    ) -> dict[str, Array] | None:
  """The per-token values `options` asks for, zero, each [*shape, ...]; or None."""
  values = {}
  if options.token_scores:
    values["token_scores"] = jnp.zeros(shape, jnp.float32)
  if options.alternatives:
    values["alternative_tokens"] = jnp.zeros(shape + (options.alternatives,),
                                             jnp.int32)
    values["alternative_scores"] = jnp.zeros(shape + (options.alternatives,),
                                             jnp.float32)
  return values or None


def per_token_values(options: SearchOptions, logits: Array, log_norm: Array,
                     row_logp: Array, top_idx: Array, pad_id: int
                     ) -> dict[str, Array] | None:
  """The per-token values of the chosen expansions [batch, beam, ...], or None.

  logits [batch, beam, vocab] and log_norm [batch, beam, 1] of the step; row_logp
  [batch, beam, k] the candidates' log-probabilities and top_idx [batch, beam] the
  chosen ones among the beam * k. A chosen token's alternatives are its parent's
  likeliest tokens (pad left out).
  """
  batch, beam, k = row_logp.shape
  values = {}
  if options.token_scores:
    values["token_scores"] = jnp.take_along_axis(row_logp.reshape(batch, beam * k),
                                                 top_idx, axis=1)
  if options.alternatives:
    unpadded = logits.at[..., pad_id].set(NEG_INF)  # A copy: only when asked.
    alt_logits, alt_tokens = jax.lax.top_k(unpadded, options.alternatives)
    parent = (top_idx // k)[..., None]  # [batch, beam, 1]
    values["alternative_tokens"] = jnp.take_along_axis(alt_tokens, parent, axis=1)
    values["alternative_scores"] = jnp.take_along_axis(alt_logits - log_norm, parent,
                                                       axis=1)
  return values or None


def shortlisted_tokens(shortlist_ids: Array, slots: Array, pad_id: int) -> Array:
  """The token ids of shortlist slots (any shape; shortlist_ids [S]); a padding
  slot reads as pad, which is never emitted."""
  ids = jnp.take(shortlist_ids, slots)
  return jnp.where(ids < 0, pad_id, ids)


def forced_tokens(prefix: Array, t: Array) -> Array:
  """[batch] int32: the prefix token each sentence must emit at step t (pad: none)."""
  return jax.lax.dynamic_index_in_dim(prefix, t, axis=1, keepdims=False)


def force(row_logits: Array, row_tokens: Array, logits: Array, forced: Array,
          pad_id: int) -> tuple[Array, Array]:
  """The candidates of sentences with a forced token: that token alone.

  row_logits, row_tokens [batch, beam, k] are each hypothesis's candidates (best
  first), logits [batch, beam, vocab] the step's; forced [batch] (pad: free). A
  forced sentence's first candidate becomes the forced token with its own logit,
  the others -inf; no rule bars it (the caller asked for it).
  """
  is_forced = (forced != pad_id)[:, None, None]  # [batch, 1, 1]
  token = jnp.broadcast_to(forced[:, None, None], logits.shape[:2] + (1,))
  logit = jnp.take_along_axis(logits, token, axis=2)  # [batch, beam, 1]
  first = jnp.arange(row_logits.shape[-1]) == 0  # [k]
  row_logits = jnp.where(is_forced, jnp.where(first, logit, NEG_INF), row_logits)
  row_tokens = jnp.where(is_forced, jnp.where(first, token, row_tokens), row_tokens)
  return row_logits, row_tokens


def eos_barred(t: Array, min_len: Array | None) -> Array:
  """[] bool: EOS may not be chosen at step t (no output shorter than min_len)."""
  return (t == 0) if min_len is None else (t < min_len)


def repeated_ngram_mask(seqs: Array, t: Array, n: int, vocab: int) -> Array:
  """[batch, beam, vocab] float32: -inf at tokens that would repeat an n-gram, else 0.

  seqs [batch, beam, max_len] holds each hypothesis's t tokens so far. The token at
  position t completes the n-gram seqs[t-n+1:t] + token; it is barred if that
  (n-1)-token suffix occurred before at positions p..p+n-2 and was followed by
  token seqs[p+n-1] (as fairseq's and CTranslate2's no_repeat_ngram_size). Added to
  the logits that rank the candidates, not those that normalise them: scores stay
  the model's log-probabilities.
  """
  batch, beam, max_len = seqs.shape
  p = jnp.arange(max_len)  # Start of an earlier occurrence of the suffix.
  match = (p + n - 1 < t)[None, None, :]  # Its follower seqs[p+n-1] is decoded.
  for j in range(n - 1):  # Suffix token j is seqs[t-n+1+j]; occurrence token p+j.
    suffix_j = jnp.take(seqs, jnp.maximum(t - n + 1 + j, 0), axis=2)[..., None]
    shifted = jnp.take(seqs, jnp.minimum(p + j, max_len - 1), axis=2)
    match &= shifted == suffix_j
  follower = jnp.take(seqs, jnp.minimum(p + n - 1, max_len - 1), axis=2)
  penalty = jnp.where(match, NEG_INF, 0.0)  # [batch, beam, max_len]
  rows = jnp.arange(batch)[:, None, None]
  slots = jnp.arange(beam)[None, :, None]
  # add, not set: a follower barred at one position and not another stays barred.
  return jnp.zeros((batch, beam, vocab), jnp.float32).at[rows, slots, follower].add(
      penalty)
