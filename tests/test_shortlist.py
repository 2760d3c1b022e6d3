"""The vocabulary shortlist: what it holds, and a search over it.

A search restricted to every token equals the plain search; a greedy search whose
shortlist holds the greedy output's tokens emits the same tokens; segments and batch
mates change nothing, as without a shortlist.
"""
import jax
import numpy as np
import pytest

from data.tokenizer import EOS_ID as EOS
from data.tokenizer import PAD_ID
from inference import shortlist as shortlist_lib
from inference.decoder import DecodeSettings
from inference.decoder import Decoder
from inference.decoder import setting_problems
from models import decoding
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from tests.test_decoding import (A, ALPHA, B, MAX_DECODE_LEN, NEIGHBOURS, SENTENCE,
                                 VOCAB, parts)  # noqa: F401  (a fixture)

BEAM = 4


def test_build_keeps_frequent_targets_and_each_source_tokens_companions():
  # Source 5 always comes with target 9, source 6 with 10 and 11 (11 twice as often);
  # target 7 is in every pair.
  pairs = [([5], [7, 9]), ([5, 6], [7, 9, 10, 11]), ([6], [7, 11]), ([5], [7, 9])]
  shortlist = shortlist_lib.build(pairs, 16, always=1, per_source=2)
  np.testing.assert_array_equal(shortlist.always, [PAD_ID, EOS, 7])
  np.testing.assert_array_equal(shortlist.per_source[5], [9, 10])  # 9: 3 pairs.
  np.testing.assert_array_equal(shortlist.per_source[6], [11, 9])  # 11: 2; 9 < 10.
  np.testing.assert_array_equal(shortlist.per_source[4], [-1, -1])
  np.testing.assert_array_equal(shortlist.candidates([6, PAD_ID]),
                                [PAD_ID, EOS, 7, 9, 11])
  stats = shortlist_lib.coverage(shortlist, [([5], [9, 12])])
  assert stats["token_coverage"] == pytest.approx(2 / 3)  # 9 and EOS; 12 is not.


def test_a_batch_shares_the_union_of_its_rows_candidates_padded_to_a_power_of_two():
  shortlist = shortlist_lib.Shortlist(
      always=np.array([0, 1, 2], np.int32),
      per_source=np.array([[-1, -1]] * 3 + [[7, 8]] + [[9, -1]] + [[-1, -1]] * 59,
                          np.int32), min_width=4)
  ids, allowed = shortlist.batch(np.array([[3, 0], [4, 0], [0, 0]], np.int32))
  np.testing.assert_array_equal(ids, [0, 1, 2, 7, 8, 9, -1, -1])
  np.testing.assert_array_equal(allowed, [[1, 1, 1, 1, 1, 0, 0, 0],
                                          [1, 1, 1, 0, 0, 1, 0, 0],
                                          [1, 1, 1, 0, 0, 0, 0, 0]])
  wide = shortlist_lib.Shortlist(always=np.arange(40, dtype=np.int32),
                                 per_source=np.full((64, 1), -1, np.int32),
                                 min_width=4)
  ids, allowed = wide.batch(np.zeros((2, 1), np.int32))
  np.testing.assert_array_equal(ids, np.arange(64))  # 64 slots: the vocabulary.
  np.testing.assert_array_equal(allowed, np.tile(np.arange(64) < 40, (2, 1)))


def test_saved_shortlist_loads_equal_and_a_missing_one_names_the_fix(tmp_path):
  shortlist = shortlist_lib.build([([3], [4])], 8, always=2, per_source=1)
  shortlist_lib.save(shortlist, tmp_path)
  loaded = shortlist_lib.load(tmp_path)
  np.testing.assert_array_equal(loaded.always, shortlist.always)
  np.testing.assert_array_equal(loaded.per_source, shortlist.per_source)
  with pytest.raises(FileNotFoundError, match="shortlist.py --workdir"):
    shortlist_lib.load(tmp_path / "elsewhere")


def _search(parts, inputs, beam, shortlist=None):
  graphdef, params = parts
  extra = {} if shortlist is None else dict(zip(("shortlist_ids",
                                                 "shortlist_allowed"), shortlist))
  return decoding.beam_search_jit(graphdef, params, inputs, ALPHA, A, B, eos_id=EOS,
                                  beam_size=beam, max_decode_len=MAX_DECODE_LEN,
                                  nbest=1, **extra)


def test_a_shortlist_of_every_token_changes_nothing(parts):  # noqa: F811
  inputs = NEIGHBOURS
  every = (np.arange(VOCAB, dtype=np.int32), np.ones((len(inputs), VOCAB), bool))
  plain, listed = _search(parts, inputs, BEAM), _search(parts, inputs, BEAM, every)
  np.testing.assert_array_equal(listed.tokens, plain.tokens)
  np.testing.assert_allclose(listed.scores, plain.scores, rtol=1e-6)


def test_greedy_over_a_shortlist_holding_its_output_emits_the_same_tokens(parts):  # noqa: F811
  """Each sentence's own candidates: its greedy output's tokens, pad, EOS and random
  others; the batch's slots are their union plus padding."""
  inputs = NEIGHBOURS
  plain = np.asarray(_search(parts, inputs, 1).tokens[:, 0])
  rng = np.random.RandomState(0)
  own = []
  for row in plain:
    used = set(row.tolist()) | {PAD_ID, EOS}
    others = [t for t in rng.permutation(VOCAB) if t not in used]
    own.append(used | set(others[:3]))
  union = sorted(set().union(*own))
  ids = np.array(union + [-1] * 4, np.int32)
  allowed = np.array([[i in s for i in ids] for s in own])
  listed = np.asarray(_search(parts, inputs, 1, (ids, allowed)).tokens[:, 0])
  np.testing.assert_array_equal(listed, plain)
  assert len(union) < VOCAB  # The shortlist left tokens out.


def test_a_sentence_emits_only_its_own_candidates(parts):  # noqa: F811
  """A shortlist without the greedy output's first token: that sentence must emit
  others, all among its own candidates, while its batch mate (whose candidates hold
  it) is unchanged."""
  inputs = NEIGHBOURS[:2]
  plain = np.asarray(_search(parts, inputs, 1).tokens[:, 0])
  ids = np.arange(VOCAB, dtype=np.int32)
  allowed = np.ones((2, VOCAB), bool)
  allowed[0, plain[0, 0]] = False
  listed = np.asarray(_search(parts, inputs, 1, (ids, allowed)).tokens[:, 0])
  assert listed[0, 0] != plain[0, 0]
  assert allowed[0][listed[0]].all()
  np.testing.assert_array_equal(listed[1], plain[1])


def test_segments_and_batch_mates_change_nothing_under_a_shortlist(parts):  # noqa: F811
  graphdef, params = parts
  rng = np.random.RandomState(1)
  # 4 + at most 11 candidates a row, of the 32 tokens.
  per_source = rng.randint(2, VOCAB, (VOCAB, 1)).astype(np.int32)
  shortlist = shortlist_lib.Shortlist(always=np.arange(4, dtype=np.int32),
                                      per_source=per_source, min_width=8)
  settings = DecodeSettings(beam_size=BEAM, alpha=ALPHA, max_len_a=A, max_len_b=B,
                            use_shortlist=True)
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  segmented, plain = (Decoder(partitioner, settings, max_len=MAX_DECODE_LEN,
                              nbest=BEAM, compact=c, shortlist=shortlist)
                      for c in (True, False))
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  assert not shortlist.batch(batch)[1].all()
  got = segmented.bind(graphdef, params)(batch)
  expected = plain.bind(graphdef, params)(batch)
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
  alone = plain.bind(graphdef, params)(SENTENCE[None])
  width = alone[0].shape[2]  # The lone sentence's bucket is shorter.
  np.testing.assert_array_equal(alone[0][0], got[0][5, :, :width])
  assert (got[0][5, :, width:] == PAD_ID).all()
  allowed = shortlist.candidates(SENTENCE)
  assert np.isin(got[0][5], allowed).all()  # Pad and EOS are among them.
  full = Decoder(partitioner, DecodeSettings(beam_size=BEAM, alpha=ALPHA, max_len_a=A,
                                             max_len_b=B), max_len=MAX_DECODE_LEN,
                 nbest=BEAM).bind(graphdef, params)(batch)
  assert not np.array_equal(full[0], got[0])  # The shortlist did restrict the search.


def test_rules_naming_outside_tokens_are_refused_beside_a_shortlist():
  for field, value in (("no_repeat_ngram_size", 2), ("return_alternatives", 2),
                       ("num_samples", 2)):
    problems = setting_problems(DecodeSettings(use_shortlist=True, **{field: value}))
    assert [f for f, _ in problems] == ["use_shortlist"], field
  decoder = Decoder(Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])),
                    DecodeSettings(use_shortlist=True), max_len=MAX_DECODE_LEN)
  with pytest.raises(ValueError, match="shortlist.py --workdir"):
    decoder._shortlist_of(np.ones((1, 3), np.int32), None)  # pylint: disable=protected-access
