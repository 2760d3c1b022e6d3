"""Beam search over the Transformer's incremental decoder, as one jitted XLA program.

The encoder runs once per batch and every decoder layer's cross-attention keys/values
are projected once per sentence. They are not tiled over the beam: the beams of a
sentence become the query axis of cross-attention (`MultiHeadAttention.attend`), so a
[batch * beam] decoder attends to [batch] keys/values. Self-attention keys/values go
into a cache preallocated for `max_decode_len` positions, written in place and never
reordered: each beam slot keeps its own entries and attention masks them to each
hypothesis's ancestors (`DecodeCache`). The output projection reads an
[embed, vocab] table laid out once per call.

The search itself (models/search.py) knows nothing of the model: this module gives it
`Transformer.decode_step` as its step function. The special ids are not declared
here: the pad id (also the decoder's start token) is the model's `cfg.pad_id`, and
callers pass the tokenizer's `eos_id`.
"""
from collections.abc import Callable

import flax
from flax import nnx
import jax
import jax.numpy as jnp

from models import search
from models.decode_state import CrossKV
from models.search import Decoded
from models.search_rules import SearchOptions
from parallel.sharding import Partitioner

Array = jax.Array


def max_lengths(inputs: Array, max_len_a: Array, max_len_b: Array,
                max_decode_len: int, pad_id: int, max_decoding_length: Array | None = None
                ) -> Array:
  """[batch] int32 per-sentence max output length, EOS included: a * src_len + b.

  src_len counts non-pad source tokens, so padding does not change it; the result is
  at most `max_decoding_length` (traced; None: no such cap) and clipped to
  [1, max_decode_len].
  """
  src_len = jnp.sum(inputs != pad_id, axis=-1).astype(jnp.float32)  # [batch]
  limit = jnp.floor(max_len_a * src_len + max_len_b)
  if max_decoding_length is not None:
    limit = jnp.minimum(limit, jnp.asarray(max_decoding_length, jnp.float32))
  return jnp.clip(limit, 1, max_decode_len).astype(jnp.int32)


def search_options(min_decoding_length: int | Array | None, no_repeat_ngram_size: int,
                   return_token_scores: bool, target_prefix: Array | None = None,
                   return_alternatives: int = 0,
                   shortlist: tuple[Array, Array] | None = None) -> SearchOptions:
  """The search's optional rules from the decode arguments (None/0/False: off).

  A shortlist (ids [S], allowed [batch, S]) ranks slots, not token ids, so the
  rules that name tokens of the whole vocabulary (n-grams, prefixes, alternatives)
  are refused beside it."""
  min_len = (None if min_decoding_length is None
             else jnp.asarray(min_decoding_length, jnp.int32))
  prefix = None if target_prefix is None else jnp.asarray(target_prefix, jnp.int32)
  if shortlist is not None and (no_repeat_ngram_size or prefix is not None
                                or return_alternatives):
    raise ValueError("A vocabulary shortlist does not combine with"
                     " no_repeat_ngram_size, a target prefix or alternatives.")
  return SearchOptions(min_len=min_len, no_repeat_ngram_size=no_repeat_ngram_size,
                       token_scores=return_token_scores, prefix=prefix,
                       alternatives=return_alternatives,
                       shortlist_ids=None if shortlist is None else jnp.asarray(
                           shortlist[0], jnp.int32),
                       shortlist_allowed=None if shortlist is None else jnp.asarray(
                           shortlist[1], bool))


def _shortlist(ids: Array | None, allowed: Array | None
               ) -> tuple[Array, Array] | None:
  if (ids is None) != (allowed is None):
    raise ValueError("shortlist_ids and shortlist_allowed come together.")
  return None if ids is None else (ids, allowed)


def _output_table(model, options: SearchOptions):
  """The output projection the steps read: the whole table, or the shortlist's
  columns of each sentence (laid out once per call)."""
  table = model.output_table()  # [embed, vocab]
  if options.shortlist_ids is None:
    return table
  return table.restrict(options.shortlist_ids, options.shortlist_allowed)


def beam_search(graphdef: nnx.GraphDef, params: nnx.State, inputs: Array,
                alpha: float | Array, max_len_a: float | Array,
                max_len_b: float | Array, *, eos_id: int, beam_size: int,
                max_decode_len: int, nbest: int = 1, forced_len: int | None = None,
                min_decoding_length: int | Array | None = None,
                max_decoding_length: int | Array | None = None,
                no_repeat_ngram_size: int = 0, return_token_scores: bool = False,
                target_prefix: Array | None = None, return_alternatives: int = 0,
                shortlist_ids: Array | None = None,
                shortlist_allowed: Array | None = None) -> Decoded:
  """Translates source rows inputs [batch, src_len] (0-padded) into n-best lists.

  graphdef/params: `nnx.split(model)`. `alpha`, `max_len_a` and `max_len_b` are traced,
  so new values reuse the compilation (pass them as floats every time: an int has
  another type and compiles anew); `eos_id`, `beam_size`, `max_decode_len`, `nbest`
  and `forced_len` are static. `forced_len` is benchmark mode: EOS is suppressed and
  every hypothesis runs to exactly `forced_len` tokens (`max_len_a/b` are ignored),
  so decoders can be compared on identical work.
  Optional rules, all off by default (and then traced not at all):
  `min_decoding_length` (traced; None: 1) bars EOS before that many tokens;
  `max_decoding_length` (traced) caps a * src_len + b; `no_repeat_ngram_size`
  (static) bars repeated n-grams; `return_token_scores` (static) fills
  `Decoded.token_scores`; `target_prefix` [batch, max_decode_len] (traced, pad
  after each row's prefix) gives the tokens each output starts with;
  `return_alternatives` (static) fills `Decoded.alternative_*` with that many
  likeliest tokens at each position; `shortlist_ids` [S] with `shortlist_allowed`
  [batch, S] (traced; S static) restrict the logits to a shortlist and each
  sentence to its own candidates in it (inference/shortlist.py).
  Compile it with `Partitioner.jit` (see `jit_beam_search`) so that it traces under
  the run's mesh and rules; `beam_search_jit` is the same without a mesh.
  """
  if forced_len is not None and not 1 <= forced_len <= max_decode_len:
    raise ValueError(f"forced_len={forced_len} must be between 1 and "
                     f"max_decode_len={max_decode_len}.")
  model = nnx.merge(graphdef, params)
  if max_decode_len > model.cfg.max_len:
    raise ValueError(f"max_decode_len={max_decode_len} exceeds model.max_len="
                     f"{model.cfg.max_len}, beyond which positions are clipped; "
                     "lower it.")
  batch = inputs.shape[0]
  if forced_len is None:
    max_len = max_lengths(inputs, jnp.asarray(max_len_a, jnp.float32),
                          jnp.asarray(max_len_b, jnp.float32), max_decode_len,
                          model.cfg.pad_id, max_decoding_length)
  else:
    max_len = jnp.full((batch,), forced_len, jnp.int32)
  cross_kv = model.precompute_cross_kv(model.encode(inputs))  # [batch, heads, src, kv]
  options = search_options(min_decoding_length, no_repeat_ngram_size,
                           return_token_scores, target_prefix, return_alternatives,
                           _shortlist(shortlist_ids, shortlist_allowed))
  output_table = _output_table(model, options)  # Laid out once per call.
  src_mask = inputs != model.cfg.pad_id  # [batch, src_len]

  def step_fn(tokens, t, cache):
    return model.decode_step(tokens, t, cache, cross_kv, src_mask, output_table)

  return search.search(
      step_fn, model.init_cache(batch, max_decode_len, beam_size), max_len,
      jnp.asarray(alpha, jnp.float32), batch=batch, beam_size=beam_size,
      max_decode_len=max_decode_len,
      num_steps=max_decode_len if forced_len is None else forced_len,
      eos_id=eos_id, pad_id=model.cfg.pad_id, nbest=nbest,
      suppress_eos=forced_len is not None, options=options)


_STATIC = ("eos_id", "beam_size", "max_decode_len", "nbest", "forced_len",
           "no_repeat_ngram_size", "return_token_scores", "return_alternatives")


# A search in segments: `begin_search`, then `continue_search` until nothing is live,
# with `take_sentences` between calls dropping the sentences that are done, so that
# a batch costs what its live sentences need (inference/decoder.py drives it). It
# runs the same steps on the same per-sentence state as `beam_search`.


@flax.struct.dataclass
class Segment:
  """A beam search paused between calls: its state and what its steps read."""
  state: search.BeamState  # Its cache is the model's DecodeCache.
  cross_kv: CrossKV
  src_mask: Array  # [batch, src_len] bool
  max_len: Array  # [batch] int32 output limit, EOS included
  options: SearchOptions = SearchOptions()  # The optional rules (`beam_search`'s).


def begin_search(graphdef: nnx.GraphDef, params: nnx.State, inputs: Array,
                 max_len_a: float | Array, max_len_b: float | Array, *,
                 beam_size: int, max_decode_len: int,
                 min_decoding_length: int | Array | None = None,
                 max_decoding_length: int | Array | None = None,
                 no_repeat_ngram_size: int = 0, return_token_scores: bool = False,
                 target_prefix: Array | None = None, return_alternatives: int = 0,
                 shortlist_ids: Array | None = None,
                 shortlist_allowed: Array | None = None) -> Segment:
  """Encodes inputs [batch, src_len] and sets up the search; no step runs yet.

  The optional rules are `beam_search`'s."""
  model = nnx.merge(graphdef, params)
  batch, pad_id = inputs.shape[0], model.cfg.pad_id
  max_len = max_lengths(inputs, jnp.asarray(max_len_a, jnp.float32),
                        jnp.asarray(max_len_b, jnp.float32), max_decode_len, pad_id,
                        max_decoding_length)
  options = search_options(min_decoding_length, no_repeat_ngram_size,
                           return_token_scores, target_prefix, return_alternatives,
                           _shortlist(shortlist_ids, shortlist_allowed))
  state = search.init_state(model.init_cache(batch, max_decode_len, beam_size),
                            batch=batch, beam_size=beam_size,
                            max_decode_len=max_decode_len, pad_id=pad_id,
                            options=options)
  return Segment(state=state, cross_kv=model.precompute_cross_kv(model.encode(inputs)),
                 src_mask=inputs != pad_id, max_len=max_len, options=options)


def continue_search(graphdef: nnx.GraphDef, params: nnx.State, segment: Segment,
                    alpha: float | Array, stop_at_live: int | Array, *, eos_id: int,
                    nbest: int = 1) -> tuple[Segment, Decoded, Array]:
  """Runs `segment` on until at most `stop_at_live` (traced; 0: none) sentences are
  live; returns it, the n-best found so far and which sentences are live [batch]."""
  model = nnx.merge(graphdef, params)
  output_table = _output_table(model, segment.options)
  state = segment.state

  def step_fn(tokens, t, cache):
    return model.decode_step(tokens, t, cache, segment.cross_kv, segment.src_mask,
                             output_table)

  state = search.run(step_fn, state, segment.max_len, jnp.asarray(alpha, jnp.float32),
                     num_steps=state.alive_seqs.shape[2], eos_id=eos_id,
                     pad_id=model.cfg.pad_id, stop_at_live=stop_at_live,
                     options=segment.options)
  return (segment.replace(state=state), search.result(state, nbest, model.cfg.pad_id),
          search.live_sentences(state))


def take_sentences(segment: Segment, index: Array) -> Segment:
  """The segment of sentences `index` [rows] (a gather: rows may repeat).

  Every array with a row per sentence is gathered; the step count and the options
  shared by the batch (min_len, shortlist_ids) stay.
  """
  take = lambda tree: jax.tree.map(lambda x: jnp.take(x, index, axis=0), tree)
  options = segment.options.replace(prefix=take(segment.options.prefix),
                                    shortlist_allowed=take(
                                        segment.options.shortlist_allowed))
  state = segment.state
  return segment.replace(
      state=take(state.replace(step=None)).replace(step=state.step),
      cross_kv=take(segment.cross_kv), src_mask=take(segment.src_mask),
      max_len=take(segment.max_len), options=options)


def jit_beam_search(partitioner: Partitioner) -> Callable[..., Decoded]:
  """`beam_search` compiled under `partitioner`'s mesh and rules (graphdef static)."""
  return partitioner.jit(beam_search, static_argnums=0, static_argnames=_STATIC)


# Without a mesh (one device, or a caller's own `jax.set_mesh`): DEFAULT_RULES.
beam_search_jit = jax.jit(beam_search, static_argnums=0, static_argnames=_STATIC)
