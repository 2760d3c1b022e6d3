"""grain pipeline: nothing lost or duplicated, disjoint shards, exact resume, fixed shapes.

Also the statistics of what the training filter drops (recipes/prepare.py).
"""
import collections
import logging

import jax
import numpy as np
import pytest

from data import pipeline
from data import tokenizer as tokenizer_lib
from recipes import prepare

ROWS, LENGTH = 8, 32


def _unpack(batches):
  """Counter of (input ids, target ids) of every packed segment, checking the masks."""
  pairs = collections.Counter()
  for b in batches:
    for f in pipeline.FEATURES:
      seg, tok, pos = b[f + "_segment_ids"], b[f], b[f + "_positions"]
      assert not tok[seg == 0].any(), "padding must hold pad ids"
      assert not pos[seg == 0].any(), "padding must hold position 0"
    for r in range(len(b["inputs"])):
      for s in range(1, int(b["inputs_segment_ids"][r].max()) + 1):
        pair = []
        for f in pipeline.FEATURES:
          where = b[f + "_segment_ids"][r] == s
          np.testing.assert_array_equal(b[f + "_positions"][r][where],
                                        np.arange(where.sum()))
          pair.append(tuple(b[f][r][where]))
        pairs[tuple(pair)] += 1
  return pairs


def _expected(source, tokenizer, max_length):
  tokenize = pipeline.Tokenize(tokenizer)
  return collections.Counter(
      tuple(tuple(pipeline.truncate(i, tokenize.map(source[i]), max_length)[f])
            for f in pipeline.FEATURES) for i in range(len(source)))


def _eval_batches(prepared, **kwargs):
  config, _, sources, tokenizer = prepared
  return list(pipeline.eval_dataset(
      sources["validation"], tokenizer, batch_size=ROWS,
      max_length=config.data.eval_max_length, **kwargs))


def test_every_eval_example_exactly_once(prepared):
  config, _, sources, tokenizer = prepared
  batches = _eval_batches(prepared, shard_index=0, shard_count=1)
  expected = _expected(sources["validation"], tokenizer, config.data.eval_max_length)
  assert sum(expected.values()) == 1014
  assert _unpack(batches) == expected


def test_two_processes_read_disjoint_shards_that_cover_the_split(prepared):
  config, _, sources, tokenizer = prepared
  parts = [_unpack(_eval_batches(prepared, shard_index=i, shard_count=2))
           for i in range(2)]
  assert sum(parts[0].values()) == 507 and sum(parts[1].values()) == 507
  expected = _expected(sources["validation"], tokenizer, config.data.eval_max_length)
  assert parts[0] + parts[1] == expected


def test_eval_truncates_instead_of_dropping(prepared):
  _, _, sources, tokenizer = prepared
  batches = list(pipeline.eval_dataset(sources["validation"], tokenizer,
                                       batch_size=ROWS, max_length=8,
                                       shard_index=0, shard_count=1))
  pairs = _unpack(batches)
  assert sum(pairs.values()) == 1014
  assert all(len(side) <= 8 and side[-1] == 1 for pair in pairs for side in pair)


def _train(prepared, seed=0, shard_index=0, shard_count=1):
  _, _, sources, tokenizer = prepared
  return pipeline.train_dataset(sources["train"], tokenizer, batch_size=ROWS,
                                max_length=LENGTH, seed=seed,
                                shard_index=shard_index, shard_count=shard_count)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_restored_iterator_continues_exactly(prepared):
  straight = iter(_train(prepared))
  expected = _take(straight, 10)[6:]
  interrupted = iter(_train(prepared))
  _take(interrupted, 6)
  state = interrupted.get_state()
  resumed = iter(_train(prepared))  # A new pipeline, as after a restart.
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)


def test_seed_determines_the_order(prepared):
  _assert_same(_take(iter(_train(prepared, seed=1)), 3),
               _take(iter(_train(prepared, seed=1)), 3))
  a, b = next(iter(_train(prepared, seed=1))), next(iter(_train(prepared, seed=2)))
  assert not np.array_equal(a["inputs"], b["inputs"])


def test_training_shards_are_disjoint(prepared):
  parts = [_unpack(_take(iter(_train(prepared, shard_index=i, shard_count=2)), 5))
           for i in range(2)]
  assert not set(parts[0]) & set(parts[1])


def test_token_budget_and_one_fixed_shape(prepared):
  batches = _take(iter(_train(prepared)), 20)
  assert {tuple(v.shape) for b in batches for v in b.values()} == {(ROWS, LENGTH)}
  assert all(b[k].dtype == np.int32 for b in batches for k in b)
  pairs = _unpack(batches)
  assert all(0 < len(side) <= LENGTH for pair in pairs for side in pair)
  fill = np.mean([(b["inputs_segment_ids"] > 0).mean() for b in batches])
  assert fill > 0.5, f"packing should fill most of each row, got {fill:.2f}"
  eval_shapes = {tuple(v.shape) for b in _eval_batches(prepared, shard_index=0,
                                                       shard_count=1)
                 for v in b.values()}
  assert eval_shapes == {(ROWS, prepared[0].data.eval_max_length)}


def test_local_batch_size_checks_divisibility():
  assert pipeline.local_batch_size(4096, 64, num_batch_shards=8, process_count=2) == 32
  with pytest.raises(ValueError, match="batch_tokens=1000"):
    pipeline.local_batch_size(1000, 64, num_batch_shards=8, process_count=1)


def test_batches_land_on_the_mesh_as_global_arrays(prepared):
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  local = next(iter(_train(prepared)))
  batch = pipeline.make_global(local, sharding)
  for k, v in batch.items():
    assert isinstance(v, jax.Array) and v.shape == (ROWS, LENGTH)
    assert v.sharding.shard_shape(v.shape) == (ROWS // 8, LENGTH)
    np.testing.assert_array_equal(np.asarray(v), local[k])


def test_corpus_stats_counts_the_pairs_training_drops(prepared, caplog):
  config, _, _, tokenizer = prepared
  source = [{"en": b"A dog runs.", "fr": b"Un chien court."},
            {"en": b"   ", "fr": b"Vide."},  # Blank: an empty side.
            {"en": b"dog " * 100, "fr": b"Long."},  # Over max_length tokens.
            {"en": b"A cat.", "fr": b"Un chat."}]
  with caplog.at_level(logging.WARNING):
    stats = prepare.corpus_stats(source, tokenizer, config.data)
  assert stats["pairs"] == stats["sampled"] == 4
  assert stats["empty_pairs"] == 1 and stats["too_long_pairs"] == 1
  assert "skips 1 empty pairs and 1 pairs longer" in caplog.text
  tokenize = pipeline.Tokenize(tokenizer)
  kept = [pipeline.keep_for_training(tokenize.map(e), config.data.max_length)
          for e in source]
  assert kept == [True, False, False, True]  # The same pairs the filter drops.
  assert stats["inputs"]["max_tokens"] > config.data.max_length


def test_prepare_on_all_processes_logs_training_stats(prepared, caplog):
  config, workdir, _, tokenizer = prepared
  with caplog.at_level(logging.INFO):
    sources, again = prepare.prepare_on_all_processes(config, str(workdir))
  assert len(sources["train"]) == 29000 and len(sources["validation"]) == 1014
  assert again.encode("Un chien.") == tokenizer.encode("Un chien.")
  assert "Training data: {'pairs': 29000" in caplog.text


def test_padding_is_the_pad_id(prepared):
  """The padded last eval batch holds PAD_ID wherever the segment id is 0."""
  _, _, sources, tokenizer = prepared
  batches = list(pipeline.eval_dataset([sources["validation"][0]], tokenizer,
                                       batch_size=ROWS, max_length=LENGTH,
                                       shard_index=0, shard_count=1))
  (batch,) = batches
  assert (batch["inputs_segment_ids"][1:] == 0).all()  # Rows added by batch_and_pad.
  for f in pipeline.FEATURES:
    pad = batch[f + "_segment_ids"] == 0
    assert pad.any() and (batch[f][pad] == tokenizer_lib.PAD_ID).all()
