"""The beam search's optional rules: length limits, repeated n-grams, token scores.

Stub searches (models/search.py over a bigram table) are checked against brute force
under the same rule; the Transformer's search against teacher-forced log-probabilities.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inference.decoder import DecodeSettings
from inference.decoder import Decoder
from inference.decoder import output_names
from inference.decoder import setting_problems
from models import decoding
from models import sampling
from models import search
from models.search_rules import SearchOptions
from models.search_rules import repeated_ngram_mask
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from tests.test_decoding import (EOS, FIRST_WORD, MAX_DECODE_LEN, NEIGHBOURS,
                                 PAD_ID, SENTENCE, log_probs, penalty, sources,
                                 tiny_model)
from tests.test_search import PAD, VOCAB, brute_force, repeats_ngram
from tests.test_search import nbest_lists as nbest
from tests.test_search import run as stub_search

def eos_loving_table(seed=0):
  table = np.random.RandomState(seed).normal(size=(VOCAB, VOCAB))
  table[:, EOS] += 4.0  # EOS right after the first word, unless barred.
  return table


@pytest.mark.parametrize("min_len", [0, 1, 3])
def test_min_decoding_length_matches_brute_force(min_len):
  """Beam 64 keeps every live prefix of 3 words: the search is exhaustive."""
  table = eos_loving_table()
  out = stub_search(table, beam=64, max_len=4, alpha=0.6, nbest=5,
                    options=SearchOptions(min_len=jnp.int32(min_len)))
  got = nbest(out)
  expected = brute_force(table, 4, 0.6, 5, min_len=min_len)  # 0: EOS alone too.
  assert [s for _, s in got] == [s for _, s in expected]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)
  assert all(len(seq) >= min_len + 1 for _, seq in got if seq[-1] == EOS)
  assert (got[0][1] == (EOS,)) == (min_len == 0)  # EOS-loving: empty when allowed.


@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram_matches_brute_force(n):
  table = np.random.RandomState(n).normal(size=(VOCAB, VOCAB)) * 0.5  # No ties.
  table[2, 3] = table[3, 2] = 5.0  # The model loves 2 3 2 3 ...
  table[PAD, 2] = 5.0
  out = stub_search(table, beam=64, max_len=4 if n == 2 else 3, alpha=0.0, nbest=5,
                    options=SearchOptions(no_repeat_ngram_size=n))
  got = nbest(out)
  expected = brute_force(table, 4 if n == 2 else 3, 0.0, 5, ngram=n)
  assert [s for _, s in got] == [s for _, s in expected]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)
  assert not any(repeats_ngram(seq, n) for _, seq in got)
  free = nbest(stub_search(table, beam=4, max_len=5, alpha=0.0, nbest=1))
  assert repeats_ngram(free[0][1], 2)  # Without the rule it repeats.


def test_repeated_ngram_mask_by_hand():
  seqs = jnp.array([[[5, 6, 5, 7, 5, 0, 0]]])  # batch 1, beam 1; 5 tokens decoded.
  mask = np.asarray(repeated_ngram_mask(seqs, jnp.int32(5), 2, 9))[0, 0]
  assert list(np.flatnonzero(np.isinf(mask))) == [6, 7]  # "5 6" and "5 7" were seen.
  mask3 = np.asarray(repeated_ngram_mask(seqs, jnp.int32(5), 3, 9))[0, 0]
  assert not np.any(np.isinf(mask3))  # The suffix "7 5" occurred only at the end.
  seqs = jnp.array([[[5, 6, 7, 5, 6, 0, 0]]])
  mask3 = np.asarray(repeated_ngram_mask(seqs, jnp.int32(5), 3, 9))[0, 0]
  assert list(np.flatnonzero(np.isinf(mask3))) == [7]  # "5 6" was followed by 7.


@pytest.fixture(scope="module")
def parts():
  return nnx.split(tiny_model())


def test_token_scores_are_the_model_log_probabilities_and_sum_to_the_score(parts):
  graphdef, params = parts
  inputs = sources(3, [6, 2, 9], 9)
  out = decoding.beam_search_jit(graphdef, params, inputs, 0.6, 1.0, 2.0, eos_id=EOS,
                                 beam_size=4, nbest=4, max_decode_len=MAX_DECODE_LEN,
                                 return_token_scores=True)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  token_scores = np.asarray(out.token_scores)  # [3, 4, 12]
  sums = token_scores.sum(-1) / penalty(lengths, 0.6)
  np.testing.assert_allclose(sums, np.asarray(out.scores), atol=1e-5)
  assert np.all(token_scores[tokens == PAD_ID] == 0)
  targets = np.where(tokens == PAD_ID, 2, tokens).reshape(-1, MAX_DECODE_LEN)
  logp = log_probs(graphdef, params, np.repeat(inputs, 4, 0), targets)
  teacher = np.take_along_axis(logp, targets[..., None], -1)[..., 0].reshape(tokens.shape)
  np.testing.assert_allclose(token_scores, np.where(tokens == PAD_ID, 0, teacher),
                             atol=1e-5)
  plain = decoding.beam_search_jit(graphdef, params, inputs, 0.6, 1.0, 2.0, eos_id=EOS,
                                   beam_size=4, nbest=4, max_decode_len=MAX_DECODE_LEN)
  np.testing.assert_array_equal(plain.tokens, out.tokens)  # Scores change nothing.
  assert plain.token_scores is None


def test_length_limits_are_traced_and_take_effect(parts):
  graphdef, params = parts
  inputs = sources(4, [6, 2, 9], 9)
  call = lambda **kw: decoding.beam_search_jit(
      graphdef, params, inputs, 0.6, 1.0, 2.0, eos_id=EOS, beam_size=4, nbest=1,
      max_decode_len=MAX_DECODE_LEN, **kw)
  base = call()
  first = call(min_decoding_length=np.int32(1), max_decoding_length=np.int32(12))
  np.testing.assert_array_equal(first.tokens, base.tokens)  # Limits not binding.
  compiled = decoding.beam_search_jit._cache_size()
  capped = call(min_decoding_length=np.int32(1), max_decoding_length=np.int32(3))
  longer = call(min_decoding_length=np.int32(6), max_decoding_length=np.int32(12))
  assert decoding.beam_search_jit._cache_size() == compiled  # New values: no compile.
  assert int(np.asarray(capped.lengths).max()) <= 3
  tokens, lengths = np.asarray(longer.tokens), np.asarray(longer.lengths)
  for row, n in zip(tokens[:, 0], lengths[:, 0]):  # >= 6 tokens before any EOS.
    assert EOS not in row[:6].tolist() and (n >= 7 or row[n - 1] != EOS)


@pytest.mark.parametrize("settings", [
    dict(min_decoding_length=3), dict(max_decoding_length=5),
    dict(no_repeat_ngram_size=2), dict(return_token_scores=True),
    dict(return_alternatives=2)])
def test_segmented_search_with_rules_matches_the_one_call_search(parts, settings):
  graphdef, params = parts
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  s = DecodeSettings(beam_size=4, alpha=0.6, max_len_a=1.0, max_len_b=2.0, **settings)
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  got, expected = (Decoder(partitioner, s, max_len=MAX_DECODE_LEN, nbest=2,
                           compact=compact).bind(graphdef, params)(batch)
                   for compact in (True, False))
  assert len(got) == len(expected) == len(output_names(s))
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("fields, bad", [
    (dict(min_decoding_length=-1), "min_decoding_length"),
    (dict(max_decoding_length=0), "max_decoding_length"),
    (dict(min_decoding_length=5, max_decoding_length=4), "min_decoding_length"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size"),
    (dict(return_token_scores="yes"), "return_token_scores")])
def test_bad_rules_are_named(fields, bad):
  assert [f for f, _ in setting_problems(DecodeSettings(**fields))] == [bad]
  assert not setting_problems(DecodeSettings())


def test_a_prefix_is_forced_and_scored_by_the_model():
  """Stub: the forced tokens come first whatever the model prefers, each scored by
  its log-probability; after the prefix the search is free (brute force over the
  continuations of the prefix)."""
  table = np.random.RandomState(5).normal(size=(VOCAB, VOCAB))
  prefix = jnp.array([[4, 4, PAD, PAD]], jnp.int32)
  out = stub_search(table, beam=27, max_len=4, alpha=0.6, nbest=3,
                    options=SearchOptions(prefix=prefix, token_scores=True))
  got = nbest(out)
  expected = [(s, q) for s, q in brute_force(table, 4, 0.6, 10**6) if q[:2] == (4, 4)]
  assert [q for _, q in got] == [q for _, q in expected[:3]]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected[:3]],
                             rtol=1e-5)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table, jnp.float32)))
  np.testing.assert_allclose(np.asarray(out.token_scores)[0, 0, :2],
                             [logp[PAD, 4], logp[4, 4]], rtol=1e-6)


@pytest.mark.parametrize("beam", [1, 4])
def test_our_best_outputs_first_tokens_as_prefix_give_that_output(parts, beam):
  """Greedy: exactly (the continuation of a prefix is the same argmax chain). Beam:
  the prefixed search keeps only the prefix's descendants, among which the
  unconstrained best was found; on these sentences it finds it again."""
  graphdef, params = parts
  inputs = sources(6, [6, 2, 9, 4], 9)
  call = lambda **kw: decoding.beam_search_jit(
      graphdef, params, inputs, 0.6, 1.0, 2.0, eos_id=EOS, beam_size=beam, nbest=1,
      max_decode_len=MAX_DECODE_LEN, **kw)
  free = call()
  tokens, lengths = np.asarray(free.tokens[:, 0]), np.asarray(free.lengths[:, 0])
  for k in (1, 2, 4):
    prefix = np.where(np.arange(MAX_DECODE_LEN) < np.minimum(k, lengths - 1)[:, None],
                      tokens, PAD_ID)
    forced = call(target_prefix=prefix, return_token_scores=True)
    np.testing.assert_array_equal(np.asarray(forced.tokens[:, 0]), tokens)
    np.testing.assert_allclose(np.asarray(forced.scores), np.asarray(free.scores),
                               atol=1e-5)
  other = np.full_like(prefix, PAD_ID)
  other[:, :2] = FIRST_WORD + 3  # A prefix the model would not choose.
  forced = call(target_prefix=other)
  assert np.all(np.asarray(forced.tokens[:, 0, :2]) == FIRST_WORD + 3)


def test_segmented_search_with_prefixes_matches_the_one_call_search(parts):
  graphdef, params = parts
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  s = DecodeSettings(beam_size=4, alpha=0.6, max_len_a=1.0, max_len_b=2.0)
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  prefix = [[FIRST_WORD + i] * (i % 3) for i in range(len(batch))]  # Some empty.
  got, expected = (Decoder(partitioner, s, max_len=MAX_DECODE_LEN, nbest=2,
                           compact=compact).bind(graphdef, params)(batch, prefix=prefix)
                   for compact in (True, False))
  assert len(got) == 3  # Token scores come with a prefix.
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for row, p in zip(got[0][:, 0], prefix):
    assert row[:len(p)].tolist() == p


def _sample(parts, inputs, **kw):
  graphdef, params = parts
  args = dict(alpha=0.6, max_len_a=1.0, max_len_b=2.0, temperature=1.0, topp=1.0,
              seed=np.uint32(7))
  args.update({k: kw.pop(k) for k in list(kw) if k in args})
  return sampling.sample_jit(graphdef, params, inputs, args["alpha"], args["max_len_a"],
                             args["max_len_b"], args["temperature"], args["topp"],
                             args["seed"], eos_id=EOS, max_decode_len=MAX_DECODE_LEN,
                             **kw)


def test_top_1_sampling_is_greedy_search(parts):
  graphdef, params = parts
  inputs = sources(7, [6, 2, 9, 4], 9)
  greedy = decoding.beam_search_jit(graphdef, params, inputs, 0.6, 1.0, 2.0,
                                    eos_id=EOS, beam_size=1,
                                    max_decode_len=MAX_DECODE_LEN)
  for kw in (dict(topk=1), dict(topk=0, topp=1e-6)):  # A nucleus of one token too.
    drawn = _sample(parts, inputs, num_samples=2, temperature=0.7, **kw)
    for s in range(2):
      np.testing.assert_array_equal(np.asarray(drawn.tokens[:, s]),
                                    np.asarray(greedy.tokens[:, 0]))
      np.testing.assert_allclose(np.asarray(drawn.scores[:, s]),
                                 np.asarray(greedy.scores[:, 0]), atol=1e-5)


def test_samples_are_reproducible_and_independent_of_the_batch(parts):
  inputs = sources(8, [6, 2, 9, 4, 7], 9)
  first = _sample(parts, inputs, num_samples=3, topk=8, return_token_scores=True)
  again = _sample(parts, inputs, num_samples=3, topk=8, return_token_scores=True)
  np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
  tokens = np.asarray(first.tokens)
  assert len({tuple(t.ravel()) for t in tokens[1]}) > 1  # Samples differ.
  # Row 2 alone, padded wider, and among other sentences in another order.
  alone = _sample(parts, np.pad(inputs[2:3], ((0, 0), (0, 3))), num_samples=3, topk=8)
  mixed = _sample(parts, inputs[[4, 2, 0]], num_samples=3, topk=8)
  np.testing.assert_array_equal(np.asarray(alone.tokens[0]), tokens[2])
  np.testing.assert_array_equal(np.asarray(mixed.tokens[1]), tokens[2])
  other_seed = _sample(parts, inputs, num_samples=3, topk=8, seed=np.uint32(8))
  assert not np.array_equal(np.asarray(other_seed.tokens), tokens)
  sums = np.asarray(first.token_scores).sum(-1) / penalty(np.asarray(first.lengths), 0.6)
  np.testing.assert_allclose(sums, np.asarray(first.scores), atol=1e-5)
  for row, n in zip(tokens.reshape(-1, MAX_DECODE_LEN), np.asarray(first.lengths).ravel()):
    assert PAD_ID not in row[:n].tolist() and EOS not in row[:1].tolist()


def test_top_k_and_nucleus_filters_by_hand():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(logits, **kw)))[0]
  assert keep(topk=2, topp=jnp.float32(1), temperature=1.0).tolist() == [1, 1, 0, 0]
  assert keep(topk=0, topp=jnp.float32(0.7), temperature=1.0).tolist() == [1, 1, 0, 0]
  assert keep(topk=0, topp=jnp.float32(0.5), temperature=1.0).tolist() == [1, 0, 0, 0]
  assert keep(topk=0, topp=jnp.float32(0.81), temperature=1.0).tolist() == [1, 1, 1, 0]


def test_sampling_keeps_the_rules_a_prefix_and_a_minimum_length(parts):
  inputs = sources(9, [6, 2, 9], 9)
  prefix = np.full((3, MAX_DECODE_LEN), PAD_ID, np.int32)
  prefix[:, :2] = [FIRST_WORD + 1, FIRST_WORD + 2]
  out = _sample(parts, inputs, num_samples=2, topk=5, target_prefix=prefix,
                min_decoding_length=np.int32(4), no_repeat_ngram_size=1,
                return_token_scores=True)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  assert np.all(tokens[..., :2] == [FIRST_WORD + 1, FIRST_WORD + 2])
  for row, n in zip(tokens.reshape(-1, MAX_DECODE_LEN), lengths.ravel()):
    words = row[:n][row[:n] != EOS].tolist()
    assert len(words) >= 4 and len(set(words)) == len(words)  # No token twice.


def test_alternatives_are_the_likeliest_tokens_at_each_position(parts):
  """Beam 4: at every position of every hypothesis, the 3 likeliest non-pad tokens
  of the teacher-forced distribution given its tokens before it; greedy: the chosen
  token is the first alternative."""
  graphdef, params = parts
  inputs = sources(10, [6, 2, 9], 9)
  for beam in (4, 1):
    out = decoding.beam_search_jit(graphdef, params, inputs, 0.6, 1.0, 2.0, eos_id=EOS,
                                   beam_size=beam, nbest=beam,
                                   max_decode_len=MAX_DECODE_LEN,
                                   return_token_scores=True, return_alternatives=3)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    alt_tokens = np.asarray(out.alternative_tokens)  # [3, beam, 12, 3]
    alt_scores = np.asarray(out.alternative_scores)
    targets = np.where(tokens == PAD_ID, 2, tokens).reshape(-1, MAX_DECODE_LEN)
    logp = log_probs(graphdef, params, np.repeat(inputs, beam, 0), targets)
    logp[..., PAD_ID] = -np.inf
    want = np.argsort(-logp, axis=-1, kind="stable")[..., :3].reshape(alt_tokens.shape)
    mask = np.arange(MAX_DECODE_LEN) < lengths[..., None]  # [3, beam, 12]
    np.testing.assert_array_equal(np.where(mask[..., None], alt_tokens, 0),
                                  np.where(mask[..., None], want, 0))
    want_scores = np.take_along_axis(logp.reshape(alt_tokens.shape[:3] + (-1,)), want,
                                     -1)
    np.testing.assert_allclose(alt_scores[mask], want_scores[mask], atol=1e-5)
    assert np.all(alt_tokens[~mask] == 0)
  np.testing.assert_array_equal(np.where(mask, alt_tokens[..., 0], PAD_ID), tokens)
