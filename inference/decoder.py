"""The jitted beam search over a mesh: token ids in, n-best token ids and scores out.

What to search with (`DecodeSettings`, the run's `config.decode`) and how to call it
(`Decoder.bind`); text, batching and restoring live beside it in inference/.
"""
from collections.abc import Callable, Sequence
import dataclasses
import math
from typing import Any

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from data import tokenizer as tokenizer_lib
from inference import shortlist as shortlist_lib
from models import decoding
from models import sampling
from parallel.sharding import Partitioner

# Batches of at least this many rows drop their done sentences as they go (in halves:
# `Decoder._segmented`); smaller ones run the search in one call.
MIN_ROWS_TO_COMPACT = 4
MAX_SAMPLES = 64  # Samples per sentence at most: each is a row of the batch.
MAX_ALTERNATIVES = 32  # Alternatives per position at most.

# decode(inputs [batch, src_len] int32) -> (tokens [batch, nbest, out_len],
#                                           scores [batch, nbest]), followed by
# token_scores [batch, nbest, out_len] and alternative tokens and scores [batch,
# nbest, out_len, alternatives] when the settings ask for them.
DecodeFn = Callable[[np.ndarray], tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to search: the fields of `config.decode`, saved with the run."""
  beam_size: int = 4  # 1 is greedy.
  alpha: float = 0.6  # GNMT length penalty exponent.
  max_len_a: float = 1.5  # Output limit a * source_len + b tokens, EOS included.
  max_len_b: float = 10.0
  # Optional rules, off by default (then the search is the program it always was).
  min_decoding_length: int = 1  # EOS barred before this many tokens (0: may be empty).
  max_decoding_length: int | None = None  # Caps a * source_len + b (None: no cap).
  no_repeat_ngram_size: int = 0  # No n-gram of this size twice in an output (0: off).
  return_token_scores: bool = False  # Each hypothesis's per-token log-probabilities.
  return_alternatives: int = 0  # ...and its likeliest tokens at each position (with
  # the token scores).
  return_alignment: bool = False  # Source-target alignment (models/alignment.py)...
  alignment_layer: int = -1  # ...from this decoder layer's cross-attention.
  # Sampling instead of the beam search (models/sampling.py): on when num_samples
  # > 0 or any other sampling field leaves its default (then one sample).
  num_samples: int = 0  # Outputs drawn per sentence (beam_size is then unused).
  sampling_topk: int = 0  # Draw among the k most likely tokens (0: all; 1: greedy).
  sampling_topp: float = 1.0  # ... and within the nucleus of this mass (1: all).
  sampling_temperature: float = 1.0  # Logits / temperature before drawing.
  seed: int = 0  # With the sentence's ids, what each sample is drawn from.
  # Rank each sentence's shortlisted tokens only (inference/shortlist.py; the
  # Decoder's `shortlist`), CTranslate2's use_vmap. Off: the whole vocabulary.
  use_shortlist: bool = False

  @classmethod
  def from_config(cls, decode_cfg: Any | None, **overrides) -> "DecodeSettings":
    """From `config.decode`, with the `overrides` that are not None replacing fields.

    A run saved before that block existed gets the defaults.
    """
    fields = {} if decode_cfg is None else dict(
        decode_cfg.to_dict() if hasattr(decode_cfg, "to_dict") else decode_cfg)
    return cls(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})

  def cache_length(self, src_len: int, max_len: int) -> int:
    """Positions the search compiles for sources of `src_len` tokens: the output
    limit ceil(a * src_len + b), at most the model's `max_len`."""
    return min(max_len, math.ceil(self.max_len_a * src_len + self.max_len_b))

  @property
  def samples(self) -> int:
    """Samples drawn per sentence; 0: beam search."""
    if self.num_samples:
      return self.num_samples
    return int(self.sampling_topk != 0 or self.sampling_topp != 1.0
               or self.sampling_temperature != 1.0)

  def search_options(self) -> dict:
    """The optional rules as `decoding.beam_search` / `begin_search` keywords.

    Rules that are off are left out, so the search traces as it does without them;
    the traced ones are passed as int32 arrays: new values do not recompile.
    """
    options = {}
    if self.min_decoding_length != 1:
      options["min_decoding_length"] = np.int32(self.min_decoding_length)
    if self.max_decoding_length is not None:
      options["max_decoding_length"] = np.int32(self.max_decoding_length)
    if self.no_repeat_ngram_size:
      options["no_repeat_ngram_size"] = self.no_repeat_ngram_size
    if self.return_token_scores or self.return_alternatives:  # Together, always.
      options["return_token_scores"] = True
    if self.return_alternatives:
      options["return_alternatives"] = self.return_alternatives
    return options


# The optional DecodeSettings fields a call, flag or request may set.
OPTIONAL_FIELDS = ("min_decoding_length", "max_decoding_length", "no_repeat_ngram_size",
                   "return_token_scores", "return_alternatives", "return_alignment",
                   "alignment_layer", "num_samples", "sampling_topk", "sampling_topp",
                   "sampling_temperature", "seed", "use_shortlist")


def setting_problems(s: DecodeSettings) -> list[tuple[str, str]]:
  """(field, allowed values) of each optional rule of `s` that cannot decode."""
  def count(value, low) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low

  problems = []
  if not count(s.min_decoding_length, 0):
    problems.append(("min_decoding_length", "an integer >= 0 (1: no empty output)"))
  if s.max_decoding_length is not None and not count(s.max_decoding_length, 1):
    problems.append(("max_decoding_length", "an integer >= 1, or unset (no cap)"))
  elif (s.max_decoding_length is not None and count(s.min_decoding_length, 0)
        and s.min_decoding_length > s.max_decoding_length):
    problems.append(("min_decoding_length", f"<= max_decoding_length"
                     f" ({s.max_decoding_length})"))
  if not count(s.no_repeat_ngram_size, 0):
    problems.append(("no_repeat_ngram_size", "an integer >= 0 (0: off)"))
  for field in ("return_token_scores", "return_alignment", "use_shortlist"):
    if not isinstance(getattr(s, field), bool):
      problems.append((field, "true or false"))
  if not isinstance(s.alignment_layer, int) or isinstance(s.alignment_layer, bool):
    problems.append(("alignment_layer", "an integer (a decoder layer; -1: the last)"))
  if not count(s.return_alternatives, 0) or s.return_alternatives > MAX_ALTERNATIVES:
    problems.append(("return_alternatives", f"an integer in [0, {MAX_ALTERNATIVES}]"))
  elif s.return_alternatives and s.samples:
    problems.append(("return_alternatives", "0 when sampling (beam search only)"))
  if not count(s.num_samples, 0) or s.num_samples > MAX_SAMPLES:
    problems.append(("num_samples", f"an integer in [0, {MAX_SAMPLES}] (0: beam"
                     " search)"))
  if not count(s.sampling_topk, 0):
    problems.append(("sampling_topk", "an integer >= 0 (0: every token; 1: greedy)"))
  if not (_number(s.sampling_topp) and 0 < s.sampling_topp <= 1):
    problems.append(("sampling_topp", "a number in (0, 1] (1: no nucleus cut)"))
  if not (_number(s.sampling_temperature) and s.sampling_temperature > 0):
    problems.append(("sampling_temperature", "a finite number > 0"))
  if not count(s.seed, 0) or s.seed >= 2**32:
    problems.append(("seed", "an integer in [0, 2**32)"))
  if s.use_shortlist is True and (s.no_repeat_ngram_size or s.return_alternatives
                                  or s.samples):
    problems.append(("use_shortlist", "false with no_repeat_ngram_size,"
                     " return_alternatives or sampling (they name tokens outside it)"))
  return problems


def _number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def prefix_rows(prefix: Sequence[Sequence[int]], rows: int, length: int) -> np.ndarray:
  """[rows, length] int32 target prefixes, pad after each (and in rows without one);
  a prefix longer than `length` is cut (the output limit cuts it anyway)."""
  out = np.full((rows, length), tokenizer_lib.PAD_ID, np.int32)
  for r, ids in enumerate(prefix):
    out[r, :min(len(ids), length)] = list(ids)[:length]
  return out


def global_batch(partitioner: Partitioner, inputs: np.ndarray) -> jax.Array:
  """`inputs` [rows, ...] as a global array, rows over ('data', 'fsdp') as they divide.

  Every process holds the same `inputs` (multi-host).
  """
  return jax.make_array_from_callback(
      inputs.shape, partitioner.batch_sharding(inputs.shape[:2]), lambda i: inputs[i])


def serving_layout(partitioner: Partitioner, params: nnx.State) -> nnx.State:
  """Where the search reads the parameters from: whole across 'fsdp', tensor shards
  kept. Laid out FSDP, every parameter would be gathered at every decoder step; this
  gathers them once per `Decoder.bind`, for fsdp times their memory per chip."""
  return partitioner.replicated_over(params, "fsdp")


def rows_for_shards(rows: int, batch_shards: int) -> int:
  """`rows` rounded up to split evenly over a mesh's batch shards
  (`Partitioner.batch_shards`): a batch that does not is left whole on every chip
  while its [batch * beam] rows are split, which reshards the search's state at
  every step."""
  return -(-rows // batch_shards) * batch_shards


def _stop_at_live(rows: int, row_multiple: int = 1) -> int:
  """When a segment of `rows` rows stops: once the live sentences fit in the next
  smaller power of two rows (0: never, below MIN_ROWS_TO_COMPACT rows or when those
  rows would not split evenly over the `row_multiple` batch shards)."""
  target = 1 << ((rows - 1).bit_length() - 1) if rows >= MIN_ROWS_TO_COMPACT else 0
  return target if target % row_multiple == 0 else 0


_BEGIN_STATIC = ("beam_size", "max_decode_len", "no_repeat_ngram_size",
                 "return_token_scores", "return_alternatives")


def output_names(s: DecodeSettings) -> tuple[str, ...]:
  """The `Decoded` fields a decode call returns, in order."""
  scored = s.return_token_scores or s.return_alternatives
  return (("tokens", "scores") + (("token_scores",) if scored else ())
          + (("alternative_tokens", "alternative_scores") if s.return_alternatives
             else ()))


class Decoder:
  """The jitted beam search over a partitioner's mesh, compiled once per shape.

  `bind(graphdef, params)` gives the DecodeFn of one set of parameters; binding new
  parameters of the same structure (e.g. at each validation pass) reuses the
  compilations. A compilation serves one (rows, bucket, beam_size, nbest) and KV cache
  length, static per source bucket: min(max_len, ceil(a * bucket + b)); alpha, a and
  b are traced, so new values of alpha do not recompile.

  With `compact` (the default), a batch of MIN_ROWS_TO_COMPACT rows or more is
  searched in segments: each stops once the live sentences fit in half its rows,
  and the next runs on those only (padded to that half), so finished sentences
  stop costing steps. The hypotheses are those of the one-call search.

  On a mesh, a batch is padded to split evenly over the batch shards
  (`rows_for_shards`) and the parameters are read whole across 'fsdp'
  (`serving_layout`), so the loop runs no collective for either.
  """

  def __init__(self, partitioner: Partitioner, settings: DecodeSettings, *,
               max_len: int, nbest: int = 1, compact: bool = True,
               shortlist: shortlist_lib.Shortlist | None = None):
    self.partitioner = partitioner
    self.shortlist = shortlist  # For settings with use_shortlist.
    self.settings = settings
    self.max_len = max_len
    self.nbest = nbest
    self.compact = compact
    self.row_multiple = partitioner.batch_shards()
    self._search = decoding.jit_beam_search(partitioner)
    self._begin = partitioner.jit(decoding.begin_search, static_argnums=0,
                                  static_argnames=_BEGIN_STATIC)
    self._continue = partitioner.jit(decoding.continue_search, static_argnums=0,
                                     static_argnames=("eos_id", "nbest"),
                                     donate_argnames=("segment",))
    self._take = partitioner.jit(decoding.take_sentences)
    self._sample = partitioner.jit(sampling.sample, static_argnums=0,
                                   static_argnames=sampling.STATIC)

  def _segmented(self, graphdef, params, inputs: np.ndarray, s: DecodeSettings,
                 max_decode_len: int, nbest: int, options: dict
                 ) -> tuple[np.ndarray, ...]:
    """The search of `inputs` in segments, dropping done sentences between them.

    `options`: the search's optional keywords (`Decoder.bind`)."""
    rows = inputs.shape[0]
    found = {"tokens": np.full((rows, nbest, max_decode_len), tokenizer_lib.PAD_ID,
                               np.int32),
             "scores": np.full((rows, nbest), -np.inf, np.float32),
             "token_scores": np.zeros((rows, nbest, max_decode_len), np.float32),
             "alternative_tokens": np.zeros((rows, nbest, max_decode_len,
                                             s.return_alternatives), np.int32),
             "alternative_scores": np.zeros((rows, nbest, max_decode_len,
                                             s.return_alternatives), np.float32)}
    segment = self._begin(graphdef, params, global_batch(self.partitioner, inputs),
                          float(s.max_len_a), float(s.max_len_b),
                          beam_size=s.beam_size, max_decode_len=max_decode_len,
                          **options)
    origin = np.arange(rows)  # The input row of each row of the segment; -1: padding.
    while True:
      n = len(origin)
      target = _stop_at_live(n, self.row_multiple)
      segment, out, live = self._continue(graphdef, params, segment, float(s.alpha),
                                          target, eos_id=tokenizer_lib.EOS_ID,
                                          nbest=nbest)
      live = np.asarray(live)
      done = np.flatnonzero(~live & (origin >= 0))
      if done.size:
        for name in output_names(s):
          found[name][origin[done]] = np.asarray(getattr(out, name))[done]
        origin[done] = -1
      keep = np.flatnonzero(live)
      if not keep.size:
        return tuple(found[name] for name in output_names(s))
      # Half the rows, whatever fewer are live: a next segment with fewer live
      # sentences than its half stops before its first step, so one gather per
      # halving is all there is to compile. Padding rows repeat a done sentence:
      # frozen, they take no part.
      size = target
      index = np.concatenate([keep, np.full(size - len(keep),
                                            np.flatnonzero(~live)[0])])
      segment = self._take(segment, jnp.asarray(index, jnp.int32))
      origin = np.where(np.arange(size) < len(keep), origin[index], -1)

  def _warm_segments(self, graphdef, params, inputs: np.ndarray, s: DecodeSettings,
                     max_decode_len: int, nbest: int, options: dict) -> None:
    """Compiles every program `_segmented` may call for a batch shaped like `inputs`
    (the continuation at each halving of its rows, the gathers between them),
    whichever sentences finish when: a server compiles them all before it is ready."""
    segment = self._begin(graphdef, params, global_batch(self.partitioner, inputs),
                          float(s.max_len_a), float(s.max_len_b),
                          beam_size=s.beam_size, max_decode_len=max_decode_len,
                          **options)
    n = inputs.shape[0]
    while True:
      target = _stop_at_live(n, self.row_multiple)
      segment, _, _ = self._continue(graphdef, params, segment, float(s.alpha), target,
                                     eos_id=tokenizer_lib.EOS_ID, nbest=nbest)
      if not target:
        return
      segment = self._take(segment, jnp.arange(target, dtype=jnp.int32))
      n = target

  def _sampled(self, graphdef, params, inputs: np.ndarray, s: DecodeSettings,
               max_decode_len: int, options: dict, rows: int
               ) -> tuple[np.ndarray, ...]:
    """`s.samples` sampled outputs per sentence, in one call (models/sampling.py)."""
    out = self._sample(graphdef, params, global_batch(self.partitioner, inputs),
                       float(s.alpha), float(s.max_len_a), float(s.max_len_b),
                       float(s.sampling_temperature), float(s.sampling_topp),
                       np.uint32(s.seed), eos_id=tokenizer_lib.EOS_ID,
                       max_decode_len=max_decode_len, num_samples=s.samples,
                       topk=s.sampling_topk, **options)
    return tuple(multihost_utils.process_allgather(getattr(out, name),
                                                   tiled=True)[:rows]
                 for name in output_names(s))

  def _shortlist_of(self, inputs: np.ndarray, prefix) -> tuple[np.ndarray, ...]:
    """(ids [S], allowed [rows, S]): the batch's shortlist (`use_shortlist`)."""
    if self.shortlist is None:
      raise ValueError("use_shortlist: this model has no vocabulary shortlist; build"
                       " one with `python shortlist.py --workdir=WORKDIR`.")
    if prefix is not None:
      raise ValueError("use_shortlist does not combine with a target prefix.")
    return self.shortlist.batch(inputs)

  def bind(self, graphdef: nnx.GraphDef, params: nnx.State) -> DecodeFn:
    """decode(inputs, settings=None, nbest=None, warmup=False, prefix=None); None:
    the Decoder's own. `warmup` also compiles what a batch of this shape may need
    later. `prefix`: per input row, the target tokens its output starts with ([]:
    none). Returns (tokens, scores), and token_scores after them if the settings
    ask for them or a prefix is given (its tokens' scores are reported apart)."""
    params = jax.device_put(params, serving_layout(self.partitioner, params))

    def decode(inputs: np.ndarray, settings: DecodeSettings | None = None,
               nbest: int | None = None, warmup: bool = False,
               prefix: Sequence[Sequence[int]] | None = None
               ) -> tuple[np.ndarray, ...]:
      s = settings or self.settings
      if prefix is not None:
        s = dataclasses.replace(s, return_token_scores=True)
      nbest = nbest or self.nbest
      rows = inputs.shape[0]
      max_decode_len = s.cache_length(inputs.shape[1], self.max_len)
      padded = rows_for_shards(rows, self.row_multiple)
      if padded != rows:  # PAD rows: empty sources, cut off again below.
        inputs = np.concatenate([inputs, np.full(
            (padded - rows, inputs.shape[1]), tokenizer_lib.PAD_ID, inputs.dtype)])
      options = s.search_options()
      if s.use_shortlist:
        ids, allowed = self._shortlist_of(inputs, prefix)
        options["shortlist_ids"] = ids
        options["shortlist_allowed"] = global_batch(self.partitioner, allowed)
      if prefix is not None:
        options["target_prefix"] = global_batch(self.partitioner, prefix_rows(
            prefix, padded, max_decode_len))
      if s.samples:
        return self._sampled(graphdef, params, inputs, s, max_decode_len, options,
                             rows)
      if (self.compact and padded >= MIN_ROWS_TO_COMPACT
          and jax.process_count() == 1):
        if warmup:
          self._warm_segments(graphdef, params, inputs, s, max_decode_len, nbest,
                              options)
        found = self._segmented(graphdef, params, inputs, s, max_decode_len, nbest,
                                options)
        return tuple(x[:rows] for x in found)
      out = self._search(graphdef, params, global_batch(self.partitioner, inputs),
                         float(s.alpha), float(s.max_len_a), float(s.max_len_b),
                         eos_id=tokenizer_lib.EOS_ID, beam_size=s.beam_size,
                         max_decode_len=max_decode_len, nbest=nbest, **options)
      # Every process gets back all rows (multi-host).
      return tuple(multihost_utils.process_allgather(getattr(out, name),
                                                     tiled=True)[:rows]
                   for name in output_names(s))
    return decode
