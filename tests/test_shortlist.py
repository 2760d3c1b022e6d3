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


def test_rows_are_padded_to_a_power_of_two_or_the_whole_vocabulary():
  shortlist = shortlist_lib.Shortlist(
      always=np.array([0, 1, 2], np.int32),
      per_source=np.array([[-1, -1]] * 3 + [[7, 8]] + [[-1, -1]] * 60, np.int32),
      min_width=4)
  rows = shortlist.rows(np.array([[3, 0], [0, 0]], np.int32))
  np.testing.assert_array_equal(rows, [[0, 1, 2, 7, 8, -1, -1, -1],
                                       [0, 1, 2, -1, -1, -1, -1, -1]])
  wide = shortlist_lib.Shortlist(always=np.arange(40, dtype=np.int32),
                                 per_source=np.full((64, 1), -1, np.int32),
                                 min_width=4)
  np.testing.assert_array_equal(wide.rows(np.zeros((2, 1), np.int32)),
                                np.tile(np.arange(64), (2, 1)))


def test_saved_shortlist_loads_equal_and_a_missing_one_names_the_fix(tmp_path):
  shortlist = shortlist_lib.build([([3], [4])], 8, always=2, per_source=1)
  shortlist_lib.save(shortlist, tmp_path)
  loaded = shortlist_lib.load(tmp_path)
  np.testing.assert_array_equal(loaded.always, shortlist.always)
  np.testing.assert_array_equal(loaded.per_source, shortlist.per_source)
  with pytest.raises(FileNotFoundError, match="shortlist.py --workdir"):
    shortlist_lib.load(tmp_path / "elsewhere")


def _search(parts, inputs, beam, token_map=None):
  graphdef, params = parts
  extra = {} if token_map is None else {"token_map": token_map}
  return decoding.beam_search_jit(graphdef, params, inputs, ALPHA, A, B, eos_id=EOS,
                                  beam_size=beam, max_decode_len=MAX_DECODE_LEN,
                                  nbest=1, **extra)


def test_a_shortlist_of_every_token_changes_nothing(parts):  # noqa: F811
  inputs = NEIGHBOURS
  every = np.tile(np.arange(VOCAB, dtype=np.int32), (len(inputs), 1))
  plain, listed = _search(parts, inputs, BEAM), _search(parts, inputs, BEAM, every)
  np.testing.assert_array_equal(listed.tokens, plain.tokens)
  np.testing.assert_allclose(listed.scores, plain.scores, rtol=1e-6)


def test_greedy_over_a_shortlist_holding_its_output_emits_the_same_tokens(parts):  # noqa: F811
  inputs = NEIGHBOURS
  plain = np.asarray(_search(parts, inputs, 1).tokens[:, 0])
  width = VOCAB // 2 + 4
  token_map = np.full((len(inputs), width), -1, np.int32)
  rng = np.random.RandomState(0)
  for r, row in enumerate(plain):
    used = set(row.tolist()) | {PAD_ID, EOS}
    others = [t for t in rng.permutation(VOCAB) if t not in used]
    ids = sorted(used | set(others[:width - len(used) - 3]))  # 3 padding slots.
    token_map[r, :len(ids)] = ids
  listed = _search(parts, inputs, 1, token_map)
  np.testing.assert_array_equal(np.asarray(listed.tokens[:, 0]), plain)
  outside = [t for t in range(VOCAB) if t not in token_map[0]]
  assert not np.isin(np.asarray(listed.tokens[0]), outside).any()


def test_segments_and_batch_mates_change_nothing_under_a_shortlist(parts):  # noqa: F811
  graphdef, params = parts
  rng = np.random.RandomState(1)
  # 4 + at most 11 candidates a row: 16 slots of the 32 tokens.
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
  assert shortlist.rows(batch).shape == (8, 16)
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
    decoder._token_map(np.ones((1, 3), np.int32), None)  # pylint: disable=protected-access
