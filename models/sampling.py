"""Random sampling over the Transformer's incremental decoder, as one jitted loop.

Each sentence draws `num_samples` independent outputs: rows of beam 1 each, token by
token from the model's distribution, sharpened or flattened by a temperature and cut
to its `topk` most likely tokens and/or its nucleus of probability `topp` (Holtzman
et al., 2020). A sample is a function of the seed, the sentence's own source ids, its
sample number and the step alone (`sentence_keys`), so a sentence draws the same
samples whatever its batch mates, padding or batch size. The rules of the beam
search hold here too: pad is never drawn, EOS not before `min_len` tokens, a prefix
is forced, repeated n-grams can be barred; `topk` 1 is greedy search, token for
token and score for score. Scores are the model's log-probabilities (before the
temperature and the cut) over the GNMT length penalty, as the beam search's.
"""
import flax
from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

from models import search
from models.decoding import max_lengths
from models.search import Decoded
from models.search_rules import eos_barred, forced_tokens, repeated_ngram_mask

Array = jax.Array
NEG_INF = -jnp.inf
_HASH_BASE = 1_000_003  # Any odd multiplier spreads the ids over uint32.


@flax.struct.dataclass
class SampleState:
  """The loop's carry; rows are batch * num_samples, sample s of sentence i at
  row i * num_samples + s."""
  step: Array  # [] int32
  seqs: Array  # [batch, num_samples, max_decode_len] int32
  logp: Array  # [batch, num_samples] float32 sum of the drawn tokens' log-probs
  done: Array  # [batch, num_samples] bool: ended with EOS or at the max length
  lengths: Array  # [batch, num_samples] int32
  token_logp: Array | None  # [batch, num_samples, max_decode_len] or None
  cache: object  # The model's DecodeCache, one slot per sample, never reordered.


def sentence_keys(seed: Array, inputs: Array, pad_id: int) -> Array:
  """[batch] PRNG keys: the seed folded with a hash of each row's non-pad ids.

  The hash sums id * base**position in uint32 (wrapping), so trailing pad adds
  nothing: the key depends on the sentence alone.
  """
  ids = jnp.where(inputs != pad_id, inputs, 0).astype(jnp.uint32)  # [batch, len]
  powers = jnp.cumprod(jnp.full(inputs.shape[1:], _HASH_BASE, jnp.uint32))
  digest = jnp.sum(ids * powers, axis=1, dtype=jnp.uint32)  # [batch]
  base = jax.random.key(seed)
  return jax.vmap(lambda d: jax.random.fold_in(base, d))(digest)


def filter_logits(logits: Array, topk: int, topp: Array, temperature: Array) -> Array:
  """[rows, vocab] logits / temperature with everything outside the top `topk`
  (static; 0: all) and outside the nucleus of mass `topp` (traced) set to -inf.

  The nucleus keeps the most likely tokens up to and including the first whose
  cumulative probability reaches topp (at least one token).
  """
  scaled = logits / temperature
  k = scaled.shape[-1] if topk == 0 else topk
  values, _ = lax.top_k(scaled, k)  # [rows, k] best first
  cumulative = jnp.cumsum(jax.nn.softmax(values, axis=-1), axis=-1)
  kept = (cumulative - jax.nn.softmax(values, axis=-1)) < topp  # Mass before it.
  threshold = jnp.min(jnp.where(kept, values, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(scaled >= threshold, scaled, NEG_INF)


def _draw(logits: Array, keys: Array, t: Array, topk: int, topp: Array,
          temperature: Array) -> Array:
  """[rows] tokens: greedy for topk 1, else one draw per row with its own key."""
  if topk == 1:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, topk, topp, temperature)
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
  return jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)


def _step(model, state: SampleState, keys: Array, ctx: dict) -> SampleState:
  """One decoder step for every row, a token drawn for each row still running."""
  batch, samples, _ = state.seqs.shape
  t = state.step
  prev = lax.dynamic_index_in_dim(state.seqs, jnp.maximum(t - 1, 0), axis=2,
                                  keepdims=False)
  prev = jnp.where(t == 0, ctx["pad_id"], prev).reshape(-1)  # [rows]
  logits, cache = model.decode_step(prev, t, state.cache, ctx["cross_kv"],
                                    ctx["src_mask"], ctx["output_table"])
  logits = logits.reshape(batch, samples, -1)  # [batch, samples, vocab]
  logp = jax.nn.log_softmax(logits, axis=-1)  # The model's, for the scores.
  masked = logits.at[..., ctx["pad_id"]].set(NEG_INF)
  masked = masked.at[..., ctx["eos_id"]].add(
      jnp.where(eos_barred(t, ctx["min_len"]), NEG_INF, 0.0))
  if ctx["no_repeat_ngram_size"]:
    masked = masked + repeated_ngram_mask(state.seqs, t, ctx["no_repeat_ngram_size"],
                                          logits.shape[-1])
  token = _draw(masked.reshape(batch * samples, -1), keys, t, ctx["topk"],
                ctx["topp"], ctx["temperature"]).reshape(batch, samples)
  if ctx["prefix"] is not None:
    forced = forced_tokens(ctx["prefix"], t)[:, None]  # [batch, 1]
    token = jnp.where(forced != ctx["pad_id"], forced, token)
  token = jnp.where(state.done, ctx["pad_id"], token)
  token_logp = jnp.where(state.done, 0.0,
                         jnp.take_along_axis(logp, token[..., None], axis=2)[..., 0])
  length = jnp.where(state.done, state.lengths, t + 1)
  done = state.done | (token == ctx["eos_id"]) | (length >= ctx["max_len"][:, None])
  update = lambda x, v: lax.dynamic_update_index_in_dim(x, v, t, axis=2)
  return state.replace(
      step=t + 1, seqs=update(state.seqs, token), logp=state.logp + token_logp,
      done=done, lengths=length, cache=cache,
      token_logp=None if state.token_logp is None else update(state.token_logp,
                                                              token_logp))


def sample(graphdef: nnx.GraphDef, params: nnx.State, inputs: Array,
           alpha: float | Array, max_len_a: float | Array, max_len_b: float | Array,
           temperature: float | Array, topp: float | Array, seed: int | Array, *,
           eos_id: int, max_decode_len: int, num_samples: int = 1, topk: int = 0,
           min_decoding_length: int | Array | None = None,
           max_decoding_length: int | Array | None = None,
           no_repeat_ngram_size: int = 0, return_token_scores: bool = False,
           target_prefix: Array | None = None) -> Decoded:
  """`num_samples` sampled outputs [batch, num_samples, ...] of inputs [batch, src_len].

  Traced: alpha, max_len_a/b, temperature (> 0), topp (in (0, 1]), seed and the
  optional length limits and prefix, as in `decoding.beam_search`; static: topk
  (0: the whole vocabulary; 1: greedy), num_samples and the switches. Samples come in
  the order drawn, not sorted by score.
  """
  model = nnx.merge(graphdef, params)
  batch, pad_id = inputs.shape[0], model.cfg.pad_id
  max_len = max_lengths(inputs, jnp.asarray(max_len_a, jnp.float32),
                        jnp.asarray(max_len_b, jnp.float32), max_decode_len, pad_id,
                        max_decoding_length)
  keys = sentence_keys(jnp.asarray(seed, jnp.uint32), inputs, pad_id)  # [batch]
  keys = jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(
      jnp.arange(num_samples)))(keys).reshape(-1)  # [rows]
  ctx = dict(pad_id=pad_id, eos_id=eos_id, cross_kv=model.precompute_cross_kv(
      model.encode(inputs)), src_mask=inputs != pad_id,
             output_table=model.output_table(), max_len=max_len,
             min_len=(None if min_decoding_length is None
                      else jnp.asarray(min_decoding_length, jnp.int32)),
             no_repeat_ngram_size=no_repeat_ngram_size, topk=topk,
             topp=jnp.asarray(topp, jnp.float32),
             temperature=jnp.asarray(temperature, jnp.float32),
             prefix=None if target_prefix is None else jnp.asarray(target_prefix,
                                                                    jnp.int32))
  shape = (batch, num_samples)
  state = SampleState(
      step=jnp.zeros((), jnp.int32),
      seqs=jnp.full(shape + (max_decode_len,), pad_id, jnp.int32),
      logp=jnp.zeros(shape, jnp.float32), done=jnp.zeros(shape, bool),
      lengths=jnp.zeros(shape, jnp.int32),
      token_logp=(jnp.zeros(shape + (max_decode_len,), jnp.float32)
                  if return_token_scores else None),
      cache=model.init_cache(batch, max_decode_len, num_samples))
  state = lax.while_loop(
      lambda s: (s.step < max_decode_len) & ~jnp.all(s.done),
      lambda s: _step(model, s, keys, ctx), state)
  scores = state.logp / search.length_penalty(state.lengths,
                                              jnp.asarray(alpha, jnp.float32))
  return Decoded(tokens=state.seqs, scores=scores, lengths=state.lengths,
                 steps=state.step, token_scores=state.token_logp)


STATIC = ("eos_id", "max_decode_len", "num_samples", "topk", "no_repeat_ngram_size",
           "return_token_scores")
# Without a mesh; `Partitioner.jit(sample, static_argnums=0, static_argnames=STATIC)`
# compiles it under one (inference/decoder.py).
sample_jit = jax.jit(sample, static_argnums=0, static_argnames=STATIC)
