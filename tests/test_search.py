"""The beam search alone, on stub step functions: no model, seconds to run.

A bigram "model" (logits depend only on the previous token) has a closed form for
every sequence's log-probability, so the search can be checked against brute force.
"""
import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import search
from models.search_rules import SearchOptions
from parallel import mesh as mesh_lib

PAD, EOS = 0, 1  # The stub's own ids; the search takes them as arguments.
VOCAB = 5  # pad, EOS and three words.


def bigram_step(table: np.ndarray):
  """A step function whose logits are table[previous token]; the cache counts steps."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, t, cache):
    del t
    return table[tokens], {"steps": cache["steps"] + 1, "rows": cache["rows"]}
  return step_fn


def run(table, *, batch=1, beam, max_len, alpha, nbest, suppress_eos=False,
        options=SearchOptions()):
  """The stub's search of `batch` sentences under `options` (the optional rules)."""
  rows = batch * beam
  cache = {"steps": jnp.zeros((), jnp.int32), "rows": jnp.arange(rows)}
  fn = jax.jit(lambda: search.search(
      bigram_step(table), cache, jnp.full((batch,), max_len, jnp.int32),
      jnp.float32(alpha), batch=batch, beam_size=beam, max_decode_len=max_len,
      num_steps=max_len, eos_id=EOS, pad_id=PAD, nbest=nbest,
      suppress_eos=suppress_eos, options=options))
  return fn()


def repeats_ngram(seq, n) -> bool:
  grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
  return len(grams) != len(set(grams))


def brute_force(table, max_len, alpha, nbest, min_len=1, ngram=0):
  """Every sequence of at least `min_len` words ending in EOS (or cut at max_len),
  without a repeated n-gram of size `ngram` (0: any), scored exactly; the best."""
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table, jnp.float32)), np.float64)
  words = range(EOS + 1, VOCAB)
  seqs = [w + (EOS,) for n in range(min_len, max_len)
          for w in itertools.product(words, repeat=n)]
  seqs += list(itertools.product(words, repeat=max_len))
  scored = []
  for seq in seqs:
    if ngram and repeats_ngram(seq, ngram):
      continue
    prev, total = PAD, 0.0
    for tok in seq:
      total += logp[prev, tok]
      prev = tok
    scored.append((total / ((5 + len(seq)) / 6) ** alpha, seq))
  return sorted(scored, reverse=True)[:nbest]


def nbest_lists(out, row=0):
  tokens, lengths = np.asarray(out.tokens[row]), np.asarray(out.lengths[row])
  return [(float(s), tuple(int(x) for x in t[:n]))
          for s, t, n in zip(np.asarray(out.scores[row]), tokens, lengths)]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_wide_beam_is_exhaustive(alpha):
  """Beam 27 keeps every live prefix of 3 words: the n-best is the brute force's."""
  table = np.random.RandomState(0).normal(size=(VOCAB, VOCAB)) * 2
  out = run(table, beam=27, max_len=3, alpha=alpha, nbest=5)
  got, expected = nbest_lists(out), brute_force(table, 3, alpha, 5)
  assert [s for _, s in got] == [s for _, s in expected]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=1e-5)


def test_pad_is_never_emitted_and_lengths_count_tokens():
  table = np.zeros((VOCAB, VOCAB))
  table[:, PAD] = 10.0  # The stub prefers pad by far: the search must skip it.
  out = run(table, beam=3, max_len=4, alpha=0.6, nbest=3)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  np.testing.assert_array_equal(lengths, (tokens != PAD).sum(-1))
  for _, seq in nbest_lists(out):
    assert PAD not in seq
  assert np.all(np.diff(np.asarray(out.scores), axis=1) <= 0)  # Best first.


def test_suppressed_eos_runs_every_hypothesis_to_the_limit():
  table = np.zeros((VOCAB, VOCAB))
  table[:, EOS] = 10.0  # EOS would end everything at once.
  out = run(table, beam=2, max_len=4, alpha=0.6, nbest=2, suppress_eos=True)
  assert int(out.steps) == 4 and np.all(np.asarray(out.lengths) == 4)
  assert not np.any(np.asarray(out.tokens) == EOS)
  early = run(table, beam=2, max_len=4, alpha=0.6, nbest=1)
  best = nbest_lists(early)[0][1]  # Without suppression: a word (none can be
  assert int(early.steps) < 4 and len(best) == 2 and best[-1] == EOS  # empty), EOS.


@pytest.mark.parametrize("beam", [1, 3])
def test_no_translation_is_empty(beam):
  """EOS cannot be the first token, however likely the model makes it: an empty
  output would beat every real one for a source of rare words (a teacher gave 43 of
  29,000 Multi30k training sentences no translation). CTranslate2's default
  min_decoding_length=1 and fairseq's min_len=1 are the same rule."""
  table = np.zeros((VOCAB, VOCAB))
  table[PAD, EOS] = 8.0  # After the start token, EOS is almost certain...
  table[EOS + 1:, EOS] = 8.0  # ...and after any word too.
  out = run(table, beam=beam, max_len=4, alpha=0.6, nbest=1)
  best = nbest_lists(out)[0][1]
  assert len(best) == 2 and best[-1] == EOS and best[0] > EOS  # One word, then EOS.
  one = run(table, beam=beam, max_len=1, alpha=0.6, nbest=1)  # Room for one token:
  assert nbest_lists(one)[0][1][0] > EOS  # a word, cut at the limit.


def test_reorder_cache_follows_parents_and_leaves_scalars():
  cache = {"k": jnp.arange(6 * 2).reshape(6, 2), "step": jnp.int32(7)}
  parent = jnp.array([[1, 1, 0], [2, 0, 0]])  # batch 2, beam 3
  moved = search.reorder_cache(cache, parent)
  rows = [1, 1, 0, 3 + 2, 3 + 0, 3 + 0]
  np.testing.assert_array_equal(moved["k"], np.asarray(cache["k"])[rows])
  assert int(moved["step"]) == 7
  assert search.reorder_cache(cache, parent[:, :1]) is cache  # Beam 1: no copy.


def test_reorder_cache_defers_to_a_cache_that_reorders_itself():
  """A cache with `reorder` (the Transformer's moves only its ancestry) is not copied."""

  @flax.struct.dataclass
  class SelfMoving:
    rows: jax.Array  # [batch * beam, 1]: would be gathered by the generic path.
    parents: jax.Array | None = None

    def reorder(self, parent):
      return self.replace(parents=parent)

  cache = SelfMoving(rows=jnp.arange(6).reshape(6, 1))
  parent = jnp.array([[1, 1, 0], [2, 0, 0]])
  moved = search.reorder_cache(cache, parent)
  np.testing.assert_array_equal(moved.rows, cache.rows)
  np.testing.assert_array_equal(moved.parents, parent)


@pytest.mark.parametrize("vocab", [8000, 1031])  # Blocked, and prime: plain top-k.
def test_top_k_matches_lax_top_k_including_ties_and_minus_inf(vocab):
  x = jax.random.normal(jax.random.key(0), (2, 3, vocab))
  tied = jnp.round(x * 2) / 2  # Many equal values: ties must go to the lower index.
  tied = tied.at[0, 0, :vocab // 2].set(-jnp.inf)
  for k in (1, 6):
    for y in (x, tied, jnp.full_like(x, -jnp.inf)):
      values, indices = search.top_k(y, k)
      want_values, want_indices = jax.lax.top_k(y, k)
      np.testing.assert_array_equal(indices, want_indices)
      np.testing.assert_array_equal(values, want_values)


def test_top_k_of_a_batch_sharded_array_runs_on_each_shard():
  x = jax.random.normal(jax.random.key(2), (8, 3, 8000))
  mesh = mesh_lib.create_mesh((4, 2, 1))
  with jax.set_mesh(mesh):
    x = jax.device_put(x, jax.NamedSharding(mesh, jax.P(("data", "fsdp"))))
    values, indices = jax.jit(search.top_k, static_argnums=1)(x, 6)
  assert indices.sharding.spec[0] == ("data", "fsdp")
  want_values, want_indices = jax.lax.top_k(np.asarray(x), 6)
  np.testing.assert_array_equal(indices, want_indices)
  np.testing.assert_array_equal(values, want_values)


def test_wide_vocabulary_search_takes_the_blocked_top_k_and_agrees_with_plain(
    monkeypatch):
  vocab = 2048
  table = jax.random.normal(jax.random.key(1), (vocab, vocab)) * 3
  assert search.top_k_block_size(vocab, 6) is not None  # The blocked path runs.
  blocked = run(table, batch=1, beam=4, max_len=6, alpha=0.6, nbest=4)
  monkeypatch.setattr(search, "top_k_block_size", lambda n, k: None)
  plain = run(table, batch=1, beam=4, max_len=6, alpha=0.6, nbest=4)
  assert nbest_lists(blocked) == nbest_lists(plain)
