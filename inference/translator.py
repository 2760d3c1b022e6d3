"""A frozen model ready to translate and score: parameters, tokenizer, programs.

  translator = Translator.from_workdir("workdir/default")
  [t.text for t in translator.translate(["A dog runs."], beam_size=5, nbest=2)]
  translator.score(["A dog runs."], ["Un chien court."])[0].score

Decode settings default to the run's `config.decode`; a call may override beam size,
alpha, n-best and the optional features (`DecodeSettings`, docs/decoding.md: length
limits, repeated n-grams, token scores and alternatives, target prefixes, sampling,
alignments). Programs are compiled once per (rows, bucket, beam, nbest) and reused:
alpha is traced, so a new alpha does not recompile. `translate_batch` and
`score_batch` run one prepared batch, for callers that form their own batches (the
server); `warmup` compiles every shape such a caller can form. Results are
`Translation`s (n-best `Hypothesis` lists, hypotheses.py) and `scoring.Score`s. Text
hygiene lives in text_io.py, tokenizing and batch shapes in bucketing.py, target
prefixes in prefixes.py, the search in decoder.py.
"""
from collections.abc import Sequence
import dataclasses
import functools
import math
import sys
import time

from absl import logging
from flax import nnx
import numpy as np
import tqdm

from data import tokenizer as tokenizer_lib
from inference import bucketing
from inference import bundle as bundle_lib
from inference import decoder as decoder_lib
from inference import restore
from inference import scoring
from inference import shortlist as shortlist_lib
from inference.bucketing import MAX_ROWS, Source
from inference.decoder import DecodeSettings
from inference.hypotheses import Hypothesis
from inference.hypotheses import Translation
from inference.hypotheses import hypotheses
from inference.prefixes import with_prefixes
from models import alignment as alignment_lib
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from storage import layout


def _check_sentences(**lists) -> None:
  """TypeError if a list of sentences is one str (it would be read char by char)."""
  for name, texts in lists.items():
    if isinstance(texts, (str, bytes)):
      raise TypeError(f"{name} must be a list of sentences, not one {type(texts).__name__}"
                      f" ({texts[:30]!r}); for one sentence pass [{name}].")


def _check_limits(max_len, batch_tokens) -> None:
  """ValueError unless max_len (None: the model's) and batch_tokens are positive ints."""
  for name, value in (("max_len", max_len), ("batch_tokens", batch_tokens)):
    if value is None and name == "max_len":
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"Translator {name}={value!r}: expected a positive integer.")


def inference_partitioner(config) -> Partitioner:
  """Every local device on the batch axis, laid out by the run's logical-axis rules."""
  return Partitioner(mesh_lib.create_mesh((-1, 1, 1)), config.logical_axis_rules)


def _workdir_shortlist(workdir, tokenizer) -> shortlist_lib.Shortlist | None:
  """WORKDIR/shortlist.npz (`use_shortlist`), or None where there is none."""
  if not shortlist_lib.path(workdir).exists():
    return None
  shortlist = shortlist_lib.load(workdir)
  if shortlist.vocab_size != tokenizer.vocab_size:
    raise ValueError(f"{shortlist_lib.path(workdir)} covers {shortlist.vocab_size}"
                     f" tokens, the run's tokenizer {tokenizer.vocab_size}: rebuild it"
                     f" with `python shortlist.py --workdir={workdir}`.")
  return shortlist


@dataclasses.dataclass(frozen=True)
class Translator:
  """Translates and scores lists of sentences with one set of frozen parameters."""
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer: tokenizer_lib.Tokenizer
  decoder: decoder_lib.Decoder
  step: int | None = None  # The checkpoint step of the parameters (None: not one).
  batch_tokens: int = 4096  # Source tokens per batch, padding included.
  max_len: int | None = None  # Tokens a sentence is cut to; default the model's limit.

  def __post_init__(self):
    _check_limits(self.max_len, self.batch_tokens)
    if self.max_len is None or self.max_len > self.decoder.max_len:
      object.__setattr__(self, "max_len", self.decoder.max_len)

  @classmethod
  def from_workdir(cls, workdir: str, *, partitioner: Partitioner | None = None,
                   step: int | None = None, checkpoint_dir: str | None = None,
                   dtype: str | None = None, quantize: str | None = None,
                   settings: DecodeSettings | None = None,
                   decode_overrides: dict | None = None, nbest: int = 1,
                   batch_tokens: int = 4096, max_len: int | None = None
                   ) -> "Translator":
    """Restores `step` (default: the latest) of WORKDIR/checkpoints or `checkpoint_dir`.

    The partitioner defaults to `inference_partitioner` of the run's config. Decode
    settings are `settings`, else the run's `config.decode` with `decode_overrides`
    (e.g. {"beam_size": 1}) replacing fields. `dtype` (e.g. 'bfloat16') and
    `quantize` ('int8', 'int8_weights') change how the frozen parameters compute
    (`restore.restore_params`). Reads config.json and spm.model once.
    """
    _check_limits(max_len, batch_tokens)
    config = layout.read_config(workdir)
    # No checkpoint is the likelier mistake: its error (how to train) comes first.
    step = restore.choose_step(restore.checkpoint_directory(workdir, checkpoint_dir),
                               workdir, step)
    tokenizer = tokenizer_lib.load_from_workdir(workdir)
    if partitioner is None:
      partitioner = inference_partitioner(config)
    if settings is None:
      settings = DecodeSettings.from_config(config.get("decode"),
                                            **(decode_overrides or {}))
    model = restore.restore_params(
        workdir, partitioner, step=step, checkpoint_dir=checkpoint_dir, dtype=dtype,
        quantize=quantize,
        stored_config=restore.model_config(workdir, config, tokenizer))
    decoder = decoder_lib.Decoder(partitioner, settings,
                                  max_len=model.model_config.max_len, nbest=nbest,
                                  shortlist=_workdir_shortlist(workdir, tokenizer))
    return cls(graphdef=model.graphdef, params=model.params, tokenizer=tokenizer,
               decoder=decoder, step=model.step, batch_tokens=batch_tokens,
               max_len=max_len)

  @classmethod
  def from_bundle(cls, path: str, *, partitioner: Partitioner | None = None,
                  decode_overrides: dict | None = None, nbest: int = 1,
                  batch_tokens: int = 4096, max_len: int | None = None
                  ) -> "Translator":
    """Loads a model bundle (`inference.bundle`, `export.py --format=bundle`).

    Decode settings are the bundle's, with `decode_overrides` replacing fields; the
    partitioner defaults to every local device on the batch axis.
    """
    _check_limits(max_len, batch_tokens)
    if partitioner is None:
      partitioner = Partitioner(mesh_lib.create_mesh((-1, 1, 1)))
    loaded = bundle_lib.load_bundle(path, partitioner)
    settings = DecodeSettings.from_config(loaded.info["decode"],
                                          **(decode_overrides or {}))
    decoder = decoder_lib.Decoder(partitioner, settings,
                                  max_len=loaded.model.model_config.max_len,
                                  nbest=nbest)
    return cls(graphdef=loaded.model.graphdef, params=loaded.model.params,
               tokenizer=loaded.tokenizer, decoder=decoder, step=loaded.model.step,
               batch_tokens=batch_tokens, max_len=max_len)

  @property
  def settings(self) -> DecodeSettings:
    """The default decode settings (the run's config.decode unless overridden)."""
    return self.decoder.settings

  @functools.cached_property
  def _decode(self) -> decoder_lib.DecodeFn:
    return self.decoder.bind(self.graphdef, self.params)

  @functools.cached_property
  def _decoder_layers(self) -> int:
    return len(nnx.merge(self.graphdef, self.params).decoder_layers)

  @functools.cached_property
  def _score(self) -> scoring.ScoreFn:
    return scoring.Scorer(self.decoder.partitioner).bind(self.graphdef, self.params)

  def options(self, beam_size: int | None = None, alpha: float | None = None,
              nbest: int | None = None, **rules) -> tuple[DecodeSettings, int]:
    """(settings, nbest) of one call: the defaults with the given values replacing them.

    `rules` are the optional DecodeSettings fields (min_decoding_length,
    max_decoding_length, no_repeat_ngram_size, return_token_scores, and sampling:
    num_samples, sampling_topk, sampling_topp, sampling_temperature, seed); None
    keeps the default. When sampling, nbest is the number of samples. Raises
    ValueError if a value is out of range (beam_size >= 1, 1 <= nbest <=
    beam_size, finite alpha >= 0, `decoder.setting_problems`).
    """
    if unknown := set(rules) - set(decoder_lib.OPTIONAL_FIELDS):
      raise TypeError(f"Unknown decode options {sorted(unknown)}; expected some of"
                      f" {list(decoder_lib.OPTIONAL_FIELDS)}.")
    given = {"beam_size": beam_size, "alpha": alpha, **rules}
    settings = dataclasses.replace(
        self.settings, **{k: v for k, v in given.items() if v is not None})
    nbest = self.decoder.nbest if nbest is None else nbest
    if settings.beam_size < 1:
      raise ValueError(f"beam_size={settings.beam_size}: give 1 (greedy) or more.")
    if settings.samples:  # Every sample is returned, in the order drawn.
      nbest = settings.samples
    elif not 1 <= nbest <= settings.beam_size:
      raise ValueError(f"nbest={nbest} must be between 1 and beam_size="
                       f"{settings.beam_size}.")
    if not (math.isfinite(settings.alpha) and settings.alpha >= 0):
      raise ValueError(f"alpha={settings.alpha} must be a finite number >= 0.")
    if problems := decoder_lib.setting_problems(settings):
      raise ValueError("; ".join(f"{field}={getattr(settings, field)!r} must be {rule}"
                                 for field, rule in problems) + ".")
    if settings.use_shortlist and self.decoder.shortlist is None:
      raise ValueError("use_shortlist: this model has no vocabulary shortlist; build"
                       " one with `python shortlist.py --workdir=WORKDIR`.")
    layers = self._decoder_layers if settings.return_alignment else 0
    if layers and not -layers <= settings.alignment_layer < layers:
      raise ValueError(f"alignment_layer={settings.alignment_layer} must be in"
                       f" [{-layers}, {layers}): the model has {layers} decoder layers.")
    return dataclasses.replace(settings, alpha=float(settings.alpha)), nbest

  def translate(self, texts: Sequence[str], *, beam_size: int | None = None,
                alpha: float | None = None, nbest: int | None = None,
                name: str = "<input>", first_line: int = 1, progress: bool = False,
                target_prefix: Sequence | None = None, **rules
                ) -> list[Translation]:
    """One Translation (text, ids, score, n-best list) per text, in order.

    `rules`: the optional decode settings, as `options` takes them (e.g.
    no_repeat_ngram_size=3, return_token_scores=True). `target_prefix`: per text,
    what its translation must start with, a string or token ids (None: nothing);
    the hypotheses then carry token scores and `prefix_len`. `name` labels warnings
    (file:line); `first_line` numbers `texts[0]` in `name` when translating a file
    in chunks.
    """
    _check_sentences(texts=texts)
    settings, nbest = self.options(beam_size, alpha, nbest, **rules)
    sources = bucketing.tokenize(texts, self.tokenizer, self.max_len, name, first_line)
    if target_prefix is not None:
      sources = with_prefixes(sources, target_prefix, self.tokenizer)
    outputs = [Translation([]) for _ in sources]  # Empty lines stay so.
    work = list(bucketing.batches(sources, self.batch_tokens))
    for batch, inputs in tqdm.tqdm(work, disable=not progress, file=sys.stderr,
                                   unit="batch"):
      for source, translation in zip(batch, self._translations(batch, inputs,
                                                               settings, nbest)):
        outputs[source.line - 1] = translation
    return outputs

  def score(self, sources: Sequence[str], targets: Sequence[str], *,
            name: str = "<input>") -> list[scoring.Score]:
    """Teacher-forced log p(target | source), per sentence and per token, in order.

    Pairs are batched like translation, by the bucket of the longer side.
    """
    _check_sentences(sources=sources, targets=targets)
    pairs = scoring.tokenize(sources, targets, self.tokenizer, self.max_len, name)
    outputs: list[scoring.Score | None] = [None] * len(pairs)
    for take, length, rows in bucketing.group(pairs, lambda p: p.length,
                                              self.batch_tokens):
      for pair, result in zip(take, self.score_batch(take, length, rows)):
        outputs[pair.line - 1] = result
    return outputs

  def _translations(self, sources: Sequence[Source], inputs: np.ndarray,
                    settings: DecodeSettings, nbest: int) -> list[Translation]:
    """Decodes `inputs`, the padded batch of `sources`; one Translation per source.

    Sources with a target prefix (`PrefixedSource`) have it forced."""
    prefixes = [getattr(s, "prefix", []) for s in sources]
    forced = {"prefix": prefixes} if any(prefixes) else {}
    out = self._decode(inputs, settings=settings, nbest=nbest, **forced)
    if forced:  # A prefixed search returns token scores too.
      settings = dataclasses.replace(settings, return_token_scores=True)
    found = dict(zip(decoder_lib.output_names(settings), out))
    alternatives = (None if "alternative_tokens" not in found else
                    (found["alternative_tokens"], found["alternative_scores"]))
    lists = hypotheses(found["tokens"], found["scores"], self.tokenizer, len(sources),
                       found.get("token_scores"), [len(p) for p in prefixes],
                       alternatives)
    if settings.return_alignment:
      lists = self._aligned(lists, inputs, found["tokens"], settings.alignment_layer)
    return [Translation(h, s.truncated) for s, h in zip(sources, lists)]

  def _aligned(self, lists: list[list[Hypothesis]], inputs: np.ndarray,
               tokens: np.ndarray, layer: int) -> list[list[Hypothesis]]:
    """The hypotheses with their alignments, from one teacher-forced pass over all
    of them (tokens [rows, nbest, out_len] of inputs [rows, src_len])."""
    rows, nbest, length = tokens.shape
    weights = np.asarray(alignment_lib.cross_attention_jit(
        self.graphdef, self.params, np.repeat(inputs, nbest, axis=0),
        tokens.reshape(rows * nbest, length), layer=layer))
    special = (tokenizer_lib.EOS_ID, tokenizer_lib.PAD_ID)
    return [[dataclasses.replace(h, alignment=tuple(alignment_lib.hard_alignment(
        weights[r * nbest + k], inputs[r].tolist(), tokens[r, k].tolist(), special)))
             for k, h in enumerate(hyps)] for r, hyps in enumerate(lists)]

  # One prepared batch at a time, for callers that form their own batches.

  def tokenize(self, texts: Sequence[str], name: str = "<request>",
               target_prefix: Sequence | None = None) -> list[Source]:
    """Sources as `translate_batch` takes them; cut to `max_len` (`truncated` set);
    with `target_prefix` (one per text, None: none), `PrefixedSource`s."""
    sources = bucketing.tokenize(texts, self.tokenizer, self.max_len, name)
    if target_prefix is not None:
      sources = with_prefixes(sources, target_prefix, self.tokenizer)
    return sources

  def translate_batch(self, sources: Sequence[Source], length: int, rows: int,
                      settings: DecodeSettings, nbest: int) -> list[Translation]:
    """Translates non-empty `sources` (within `length` tokens) as one [rows, length]."""
    inputs = bucketing.pad_batch([s.ids for s in sources], length, rows)
    return self._translations(sources, inputs, settings, nbest)

  def score_batch(self, pairs: Sequence[scoring.Pair], length: int, rows: int
                  ) -> list[scoring.Score]:
    return scoring.score_batch(pairs, length, rows, self._score)

  def warmup(self, batch_tokens: int, max_rows: int = MAX_ROWS, *,
             settings: DecodeSettings | None = None, nbest: int = 1,
             score: bool = True) -> int:
    """Compiles every (rows, bucket) shape that batches within `batch_tokens` can take.

    Decodes (and scores) a one-token sentence in each shape, so the run is short.
    Returns the number of shapes.
    """
    settings = settings or self.settings
    shapes = bucketing.batch_shapes(self.max_len, batch_tokens, max_rows)
    start = time.perf_counter()
    ids = [tokenizer_lib.UNK_ID, tokenizer_lib.EOS_ID]
    for rows, length in shapes:
      batch = bucketing.pad_batch([ids] * rows, length, rows)
      self._decode(batch, settings=settings, nbest=nbest, warmup=True)
      if score:
        np.asarray(self._score(batch, batch))
    logging.info("Compiled %d shapes (rows, bucket) in %.1f s: %s", len(shapes),
                 time.perf_counter() - start, shapes)
    return len(shapes)
