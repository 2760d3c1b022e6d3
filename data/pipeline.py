"""grain input pipeline: tokenized sentence pairs packed into fixed-shape batches.

Why packing rather than length buckets: a packed batch always has the shape
[rows, max_length], so the train step compiles once, and every process of a multi-host
run produces the same local shape at every step, which
`jax.make_array_from_process_local_data` requires (with buckets, two hosts could pick
different buckets for the same step). Short Multi30k captions (~15 tokens) fill a
64-token row three or four times over, so little compute goes to padding. The model
sees each packed sentence on its own through `*_segment_ids` (attention masks) and
`*_positions` (position embeddings restart at 0).

A batch is a dict of int32 arrays, each [rows, max_length]:
  inputs, targets                          token ids, PAD_ID (0) = padding
  inputs_segment_ids, targets_segment_ids  1, 2, ... per packed pair, 0 = padding
  inputs_positions, targets_positions      position within its own sentence
"""
import dataclasses
import functools

from absl import logging
import grain
import jax
import numpy as np

from data import datasets
from data import tokenizer as tokenizer_lib

FEATURES = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
  """{'en': text, 'fr': text} -> {'inputs': ids + eos, 'targets': ids + eos}."""
  tokenizer: tokenizer_lib.Tokenizer
  source_lang: str = "en"
  target_lang: str = "fr"

  def map(self, example):
    def ids(lang):
      text = datasets.decode_text(example[lang]).strip()
      if not text:  # An empty side stays empty (no eos), so filters can see it.
        return np.zeros([0], np.int32)
      return np.array(self.tokenizer.encode(text) + [tokenizer_lib.EOS_ID], np.int32)
    return {"inputs": ids(self.source_lang), "targets": ids(self.target_lang)}


def keep_for_training(example, max_length: int) -> bool:
  """Training drops empty pairs and pairs with a side longer than `max_length`."""
  return all(0 < len(example[f]) <= max_length for f in FEATURES)


def truncate(index: int, example, max_length: int):
  """Evaluation keeps every example, cutting an over-long side to `max_length`."""
  for f in FEATURES:
    if len(example[f]) > max_length:
      logging.warning("Example %d: %s has %d tokens; truncated to %d (raise"
                      " config.data.eval_max_length to keep it whole).",
                      index, f, len(example[f]), max_length)
      example[f] = np.concatenate(
          [example[f][:max_length - 1], [tokenizer_lib.EOS_ID]]).astype(np.int32)
  return example


def _shard(source, shard_index: int | None, shard_count: int | None):
  """Process i of n reads examples i, i+n, i+2n, ...: disjoint parts, complete together."""
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  return grain.MapDataset.source(source)[shard_index::shard_count]


def _pack_and_batch(ds: grain.IterDataset, *, batch_size: int, max_length: int,
                    seed: int, shuffle_bins: bool, drop_remainder: bool):
  lengths = {f: max_length for f in FEATURES}
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=lengths, num_packing_bins=batch_size, seed=seed,
      shuffle_bins=shuffle_bins,
      padding_struct={f: tokenizer_lib.PAD_ID for f in FEATURES})
  if drop_remainder:
    return ds.batch(batch_size, drop_remainder=True)
  # The last batch is padded with all-zero rows (segment id 0: masked everywhere).
  # batch_and_pad has one pad value for every feature, segment ids included, so
  # its 0 is a pad token only while PAD_ID is 0.
  assert tokenizer_lib.PAD_ID == 0, "batch_and_pad pads token ids with 0"
  return ds.batch(batch_size, batch_fn=functools.partial(
      grain.experimental.batch_and_pad, batch_size=batch_size))


def train_dataset(source, tokenizer, *, batch_size: int, max_length: int, seed: int,
                  source_lang: str = "en", target_lang: str = "fr",
                  shard_index: int | None = None, shard_count: int | None = None,
                  worker_count: int = 0) -> grain.IterDataset:
  """Endless, shuffled (reshuffled every epoch), packed batches of this process's shard.

  Args:
    source: random-access sequence of {'en': bytes, 'fr': bytes}.
    tokenizer: a `data.tokenizer.Tokenizer`.
    batch_size: rows per batch on this process.
    max_length: row length; longer pairs are dropped.
    seed: shuffle seed; the same seed gives the same batches.
    shard_index, shard_count: default to this process's index and the process count.
    worker_count: grain worker processes (0 = in the main process).
  """
  ds = _shard(source, shard_index, shard_count).shuffle(seed=seed).repeat()
  ds = ds.map(Tokenize(tokenizer, source_lang, target_lang))
  ds = ds.filter(functools.partial(keep_for_training, max_length=max_length))
  ds = _pack_and_batch(ds.to_iter_dataset(), batch_size=batch_size,
                       max_length=max_length, seed=seed, shuffle_bins=True,
                       drop_remainder=True)
  if worker_count:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def eval_dataset(source, tokenizer, *, batch_size: int, max_length: int,
                 source_lang: str = "en", target_lang: str = "fr",
                 shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.IterDataset:
  """One pass, in order, over every example of this process's shard, packed."""
  ds = _shard(source, shard_index, shard_count)
  ds = ds.map(Tokenize(tokenizer, source_lang, target_lang))
  ds = ds.map_with_index(functools.partial(truncate, max_length=max_length))
  return _pack_and_batch(ds.to_iter_dataset(), batch_size=batch_size,
                         max_length=max_length, seed=0, shuffle_bins=False,
                         drop_remainder=False)


def local_batch_size(batch_tokens: int, max_length: int, *, num_batch_shards: int,
                     process_count: int) -> int:
  """Rows per process for a global budget of `batch_tokens` tokens per side."""
  rows = batch_tokens // max_length
  if rows == 0 or rows % num_batch_shards or rows % process_count:
    raise ValueError(
        f"config.batch_tokens={batch_tokens} gives {rows} rows of"
        f" max_length={max_length}, which must be a positive multiple of the"
        f" {num_batch_shards} batch shards of the mesh and of the {process_count}"
        " processes. Change batch_tokens (or data.max_length).")
  return rows // process_count


def make_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays laid out by `sharding`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
