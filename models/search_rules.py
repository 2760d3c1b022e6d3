"""Optional rules of the beam search (models/search.py), off unless asked for:
a minimum length, no repeated n-grams, per-token scores, a target prefix.

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
  # Static: keep each hypothesis's per-token log-probabilities.
  token_scores: bool = flax.struct.field(pytree_node=False, default=False)
  # [batch, max_decode_len] int32: tokens each output must start with, pad after
  # them (a row of pad: no prefix). None: no sentence has one.
  prefix: Array | None = None


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
