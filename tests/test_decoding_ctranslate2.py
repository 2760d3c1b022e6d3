"""The optional decode rules agree with CTranslate2's on the same exported weights.

Greedy search (beam 1) on tests/test_export.py's tiny random model with its own
output layer and EOS favoured a little: CTranslate2's min_decoding_length,
max_decoding_length and no_repeat_ngram_size give our tokens, and its teacher-forced
log-probabilities of those tokens (`score_batch`) are our token scores. (Its search
renormalises over the tokens it may emit, pad suppressed; ours keeps the model's own
log-probabilities, which is what `score_batch` reports.)
"""
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")

# pylint: disable=wrong-import-position
from data.tokenizer import EOS_ID, PAD_ID
from inference import export
from models import decoding
from models import sampling
from tests.test_export import (FIRST_WORD, as_pieces, ct2_translator, padded,
                               random_rows, tiny_model)

MAX_DECODE_LEN = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = tiny_model(share_embeddings=False, seed=2)
  model.logits_dense.bias[...] = model.logits_dense.bias[...].at[EOS_ID].add(1.0)
  pieces = export.synthetic_vocabulary(model.cfg.vocab_size)
  translator = ct2_translator(model, pieces, tmp_path_factory.mktemp("ct2") / "m")
  sources = random_rows(np.random.default_rng(1), 12, 10)
  return model, pieces, translator, sources


def ours(model, sources, **rules):
  graphdef, params = nnx.split(model, nnx.Param)
  return decoding.beam_search_jit(graphdef, params, jnp.asarray(padded(sources)), 0.0,
                                  1.0, 4.0, eos_id=EOS_ID, beam_size=1,
                                  max_decode_len=MAX_DECODE_LEN, **rules)


def theirs(translator, pieces, source, limit, **options):
  """CTranslate2's greedy output and its log-probability of each of its tokens
  (EOS last)."""
  options = {**export.translate_options(pieces, beam_size=1, max_decoding_length=limit),
             **options}
  hyp = translator.translate_batch([as_pieces(source, pieces)], **options)[0]
  scored = translator.score_batch([as_pieces(source, pieces)], [hyp.hypotheses[0]])
  return hyp.hypotheses[0], scored[0].log_probs


@pytest.mark.parametrize("rules, options", [
    ({}, {}),
    ({"min_decoding_length": np.int32(6)}, {"min_decoding_length": 6}),
    ({"max_decoding_length": np.int32(5)}, {}),
    ({"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 2}),
])
def test_greedy_tokens_and_token_scores_match_ctranslate2(setup, rules, options):
  model, pieces, translator, sources = setup
  out = ours(model, sources, return_token_scores=True, **rules)
  cap = int(rules.get("max_decoding_length", MAX_DECODE_LEN))
  for i, source in enumerate(sources):
    limit = min(len(source) + 4, cap)  # a * src_len + b, then the cap.
    tokens, length = np.asarray(out.tokens[i, 0]), int(out.lengths[i, 0])
    hyp, log_probs = theirs(translator, pieces, source, limit, **options)
    assert hyp == as_pieces(tokens, pieces), i
    token_scores = np.asarray(out.token_scores[i, 0, :length])
    np.testing.assert_allclose(token_scores, log_probs[:length], atol=1e-4)
    assert float(out.scores[i, 0]) == pytest.approx(token_scores.sum(), abs=1e-4)
  if rules:  # The rule changed something, so the comparison tested it.
    plain = ours(model, sources)
    assert not np.array_equal(np.asarray(plain.tokens), np.asarray(out.tokens))


def test_greedy_with_a_target_prefix_matches_ctranslate2(setup):
  """Prefixes of 1-3 random words: CTranslate2's greedy output from the prefix is
  ours, and its teacher-forced log-probabilities are our token scores, prefix
  included."""
  model, pieces, translator, sources = setup
  rng = np.random.default_rng(3)
  prefixes = [list(rng.integers(FIRST_WORD, model.cfg.vocab_size, rng.integers(1, 4)))
              for _ in sources]
  prefix = np.full((len(sources), MAX_DECODE_LEN), PAD_ID, np.int32)
  for row, p in zip(prefix, prefixes):
    row[:len(p)] = p
  out = ours(model, sources, target_prefix=prefix, return_token_scores=True)
  for i, (source, p) in enumerate(zip(sources, prefixes)):
    tokens, length = np.asarray(out.tokens[i, 0]), int(out.lengths[i, 0])
    assert tokens[:len(p)].tolist() == p
    options = export.translate_options(pieces, beam_size=1,
                                       max_decoding_length=len(source) + 4)
    hyp = translator.translate_batch([as_pieces(source, pieces)],
                                     target_prefix=[as_pieces(p, pieces)],
                                     **options)[0].hypotheses[0]
    assert hyp == as_pieces(tokens, pieces), i
    log_probs = translator.score_batch([as_pieces(source, pieces)], [hyp])[0].log_probs
    np.testing.assert_allclose(np.asarray(out.token_scores[i, 0, :length]),
                               log_probs[:length], atol=1e-4)


def test_top_1_sampling_matches_ctranslate2(setup):
  """CTranslate2's sampling_topk=1 is greedy, whatever the temperature; so is ours."""
  model, pieces, translator, sources = setup
  graphdef, params = nnx.split(model, nnx.Param)
  out = sampling.sample_jit(graphdef, params, jnp.asarray(padded(sources)), 0.0, 1.0,
                            4.0, 0.5, 1.0, np.uint32(1), eos_id=EOS_ID,
                            max_decode_len=MAX_DECODE_LEN, topk=1)
  for i, source in enumerate(sources):
    options = export.translate_options(pieces, beam_size=1,
                                       max_decoding_length=len(source) + 4)
    hyp = translator.translate_batch([as_pieces(source, pieces)], sampling_topk=1,
                                     sampling_temperature=0.5, **options)[0]
    assert hyp.hypotheses[0] == as_pieces(np.asarray(out.tokens[i, 0]), pieces), i
