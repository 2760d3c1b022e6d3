"""Beam search: exhaustive search, greedy, reference search, batch/padding/mesh
invariance, no recompiles for new alpha/max lengths, forced length, n-best, early stop.

References below score with full teacher-forced forward passes, never with the
incremental decoder, so they also check `Transformer.decode_step` against the model.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.tokenizer import EOS_ID as EOS
from data.tokenizer import PAD_ID
from inference.decoder import DecodeSettings
from inference.decoder import Decoder
from models import Transformer, TransformerConfig, decoding
from models.search import live_score_bound
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner

VOCAB = 32
FIRST_WORD = max(PAD_ID, EOS) + 1  # The lowest id that is neither pad nor EOS.
MAX_DECODE_LEN = 12
TOL = 1e-5  # fp32 scores: incremental decoding vs full forward passes.
FILL = 2  # Teacher forcing needs a non-pad target at every position it predicts.


def tiny_model(vocab_size: int = VOCAB, seed: int = 0, **overrides) -> Transformer:
  return Transformer(TransformerConfig(
      vocab_size=vocab_size, pad_id=PAD_ID, emb_dim=32, num_heads=4, num_encoder_layers=2,
      num_decoder_layers=2, qkv_dim=32, mlp_dim=64, max_len=64, **overrides),
                     rngs=nnx.Rngs(seed))


def beam_search(*args, **kwargs) -> decoding.Decoded:
  """The jitted search without a mesh, with the tokenizer's EOS."""
  return decoding.beam_search_jit(*args, eos_id=EOS, **kwargs)


# One jitted forward; equal shapes reuse its compilation.
_forward = jax.jit(lambda graphdef, params, inputs, targets:
                   nnx.merge(graphdef, params)(inputs, targets), static_argnums=0)


def log_probs(graphdef, params, inputs, targets) -> np.ndarray:
  """[batch, tgt_len, vocab] log-probabilities of a teacher-forced forward pass."""
  logits = _forward(graphdef, params, jnp.asarray(inputs), jnp.asarray(targets))
  return np.asarray(jax.nn.log_softmax(logits), np.float64)


def penalty(length: int, alpha: float) -> float:
  return ((5 + length) / 6) ** alpha


def greedy_reference(graphdef, params, inputs, max_lens):
  """Greedy search by a Python loop over full forwards: most likely non-pad token (not
  EOS first) until EOS or the sentence's max length. Returns token lists and
  log-probability sums."""
  batch = inputs.shape[0]
  targets = np.full((batch, MAX_DECODE_LEN), FILL, np.int32)
  seqs, logp_sums = [[] for _ in range(batch)], np.zeros(batch)
  for t in range(max(max_lens)):
    logp = log_probs(graphdef, params, inputs, targets)[:, t]  # [batch, vocab]
    for i, seq in enumerate(seqs):
      if len(seq) == max_lens[i] or (seq and seq[-1] == EOS):
        continue
      barred = (PAD_ID, EOS) if t == 0 else (PAD_ID,)
      token = int(np.argmax(np.where(np.isin(np.arange(len(logp[i])), barred),
                                     -np.inf, logp[i])))
      seq.append(token)
      logp_sums[i] += logp[i, token]
      targets[i, t] = token
  return seqs, logp_sums


def beam_reference(graphdef, params, src, beam, alpha, max_len):
  """The search rules of `models.decoding` in plain Python, run to the max length with
  no early stop. Returns the n-best [(score, tokens)] best first."""
  alive, finished = [((), 0.0)], []
  while alive:
    t = len(alive[0][0])
    targets = np.full((beam, MAX_DECODE_LEN), FILL, np.int32)
    for row, (seq, _) in enumerate(alive):
      targets[row, :t] = seq
    logp = log_probs(graphdef, params, np.repeat(src[None], beam, 0), targets)[:, t]
    candidates = sorted(((s + logp[row, w], seq + (w,))
                         for row, (seq, s) in enumerate(alive)
                         for w in range(1 if t else EOS + 1, logp.shape[-1])),
                        reverse=True)[:beam]  # Not EOS first: nothing is empty.
    alive = []
    for s, seq in candidates:
      if seq[-1] == EOS or len(seq) == max_len:
        finished.append((s / penalty(len(seq), alpha), seq))
      else:
        alive.append((seq, s))
  return sorted(finished, reverse=True)[:beam]


def as_lists(out: decoding.Decoded, row: int) -> list[tuple[float, tuple[int, ...]]]:
  """A sentence's n-best as [(score, tokens)], checking lengths match the tokens."""
  tokens, lengths = np.asarray(out.tokens[row]), np.asarray(out.lengths[row])
  np.testing.assert_array_equal(lengths, (tokens != PAD_ID).sum(-1))
  return [(float(s), tuple(int(x) for x in tok[:n]))
          for s, tok, n in zip(np.asarray(out.scores[row]), tokens, lengths)]


def assert_same_nbest(got, expected):
  assert [seq for _, seq in got] == [seq for _, seq in expected]
  np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], atol=TOL)


def sources(seed: int, lengths, width: int) -> np.ndarray:
  """Rows of random ids (no pad, no EOS) with the given lengths, 0-padded to width."""
  rng = np.random.RandomState(seed)
  out = np.full((len(lengths), width), PAD_ID, np.int32)
  for i, n in enumerate(lengths):
    out[i, :n] = rng.randint(FIRST_WORD, VOCAB, n)
  return out


SENTENCE = sources(0, [6], 6)[0]  # The sentence whose output must not change.
NEIGHBOURS = sources(1, [9, 3, 7, 11, 2, 5, 8], 11)
# beam 4, alpha, a, b: max lengths 1.0 * src_len + 2 (8 for SENTENCE, 13 -> 12 capped).
BEAM, ALPHA, A, B = 4, 0.6, 1.0, 2.0
search = dict(beam_size=BEAM, nbest=BEAM, max_decode_len=MAX_DECODE_LEN)


@pytest.fixture(scope="module")
def parts():
  return nnx.split(tiny_model())


@pytest.fixture(scope="module")
def eos_params(parts):
  """Same graphdef, output shifted towards EOS: the final norm's bias gets a multiple of
  the EOS embedding, adding about 8 to the EOS logit (still input-dependent)."""
  graphdef, params = parts
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
  eos_row = model.embed.embedding[EOS]
  model.decoder_norm.bias[...] = 8.0 * eos_row / jnp.sum(eos_row**2)
  return nnx.split(model)[1]


@pytest.fixture(scope="module")
def alone(parts):
  graphdef, params = parts
  return beam_search(graphdef, params, SENTENCE[None], ALPHA, A, B, **search)


def test_exhaustive_search_matches_brute_force():
  """Vocab 6 (4 words besides pad and EOS), max length 4: all 340 complete sequences.

  A beam of the vocabulary size is not exhaustive (16 live prefixes after 2 steps);
  beam 80 keeps every candidate (at most 16 * 5 at step 3), so the search must return
  the brute-force n-best exactly, also with a length penalty and early stopping on.
  """
  graphdef, params = nnx.split(tiny_model(vocab_size=6, seed=1))
  src = np.array([[3, 5, 2, 4, 4]], np.int32)
  words, max_len = range(FIRST_WORD, 6), 4
  seqs = [w + (EOS,) for n in range(1, max_len)  # At least one word: none is empty.
          for w in itertools.product(words, repeat=n)]
  seqs += list(itertools.product(words, repeat=max_len))
  targets = np.full((len(seqs), max_len), PAD_ID, np.int32)
  for i, seq in enumerate(seqs):
    targets[i, :len(seq)] = seq
  logp = log_probs(graphdef, params, np.repeat(src, len(seqs), 0), targets)
  sums = [sum(logp[i, t, w] for t, w in enumerate(seq)) for i, seq in enumerate(seqs)]
  for alpha in (0.0, 1.0):
    expected = sorted((s / penalty(len(seq), alpha), seq) for s, seq in zip(sums, seqs))
    out = beam_search(graphdef, params, src, alpha, 0.0, float(max_len),
                                   beam_size=80, nbest=5, max_decode_len=max_len)
    assert_same_nbest(as_lists(out, 0), expected[::-1][:5])


def test_beam_1_is_greedy(parts, eos_params):
  """Any alpha: beam 1 stops at the first EOS. Rows: padded sources, different max
  lengths (8, 4, 11), and an EOS-biased model."""
  graphdef, params = parts
  inputs = sources(2, [6, 2, 9], 9)
  max_lens = [8, 4, 11]
  for p in (params, eos_params):
    out = beam_search(graphdef, p, inputs, 1.0, A, B, beam_size=1,
                                   max_decode_len=MAX_DECODE_LEN)
    seqs, logp_sums = greedy_reference(graphdef, p, inputs, max_lens)
    for i, seq in enumerate(seqs):
      assert_same_nbest(as_lists(out, i), [(logp_sums[i] / penalty(len(seq), 1.0),
                                            tuple(seq))])
  assert [len(s) for s in seqs] == [2, 2, 2]  # EOS-biased: one word, then EOS.


def test_beam_matches_reference_search(parts, alone):
  graphdef, params = parts
  expected = beam_reference(graphdef, params, SENTENCE, BEAM, ALPHA, max_len=8)
  assert_same_nbest(as_lists(alone, 0), expected)


def test_post_ln_unshared_embeddings_match_reference_search():
  """The decoder wiring in `Transformer.decode_step` for the other block layout."""
  graphdef, params = nnx.split(tiny_model(seed=2, pre_layer_norm=False,
                                          share_embeddings=False))
  out = beam_search(graphdef, params, SENTENCE[None], ALPHA, A, B, **search)
  assert_same_nbest(as_lists(out, 0),
                    beam_reference(graphdef, params, SENTENCE, BEAM, ALPHA, max_len=8))


def test_independent_of_batch_mates_padding_and_mesh(parts, alone):
  graphdef, params = parts
  expected = as_lists(alone, 0)
  # Row 1 of 3: padded to 9, a longer (later-stopping) and a shorter neighbour.
  batch = np.concatenate([NEIGHBOURS[:1, :9], np.pad(SENTENCE, (0, 3))[None],
                          NEIGHBOURS[1:2, :9]])
  out = beam_search(graphdef, params, batch, ALPHA, A, B, **search)
  assert_same_nbest(as_lists(out, 1), expected)
  assert int(out.steps) > int(alone.steps) == 8  # The loop ran on for the neighbour.

  # Batch 8 sharded over ('data', 'fsdp') = (4, 2), parameters FSDP-sharded; row 5.
  partitioner = Partitioner(mesh_lib.create_mesh((4, 2, 1)))
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  sharded_params = jax.device_put(params, partitioner.state_shardings(params))
  inputs = jax.device_put(batch, partitioner.batch_sharding())
  out = decoding.jit_beam_search(partitioner)(graphdef, sharded_params, inputs, ALPHA,
                                              A, B, eos_id=EOS, **search)
  assert out.tokens.sharding.spec[0] == ("data", "fsdp")
  assert_same_nbest(as_lists(out, 5), expected)


def test_decodes_under_the_partitioners_own_rules(parts, alone):
  """A config's non-default rules reach the search: here the batch goes over
  'tensor', which DEFAULT_RULES keeps for heads, and the result is unchanged."""
  graphdef, params = parts
  rules = (("batch", "tensor"), ("heads", None), ("mlp", None), ("vocab", None))
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 8)), rules)
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  inputs = jax.device_put(batch, partitioner.batch_sharding())
  assert inputs.sharding.spec[0] == "tensor"
  out = decoding.jit_beam_search(partitioner)(graphdef, params, inputs, ALPHA, A, B,
                                              eos_id=EOS, **search)
  assert out.tokens.sharding.spec[0] == "tensor"
  assert_same_nbest(as_lists(out, 5), as_lists(alone, 0))


def test_new_alpha_and_max_lengths_do_not_recompile(parts, alone):
  graphdef, params = parts
  compiled = decoding.beam_search_jit._cache_size()
  outs = [beam_search(graphdef, params, SENTENCE[None], alpha, a, b,
                                   **search)
          for alpha, a, b in [(0.0, A, B), (2.0, A, B), (ALPHA, 0.5, 1.0)]]
  assert decoding.beam_search_jit._cache_size() == compiled
  # The values did take effect: other scores, then max length 0.5 * 6 + 1 = 4.
  assert not np.allclose(outs[0].scores, alone.scores)
  assert not np.allclose(outs[1].scores, alone.scores)
  assert int(outs[2].lengths.max()) == 4 and int(alone.lengths.max()) == 8


def test_forced_len_and_nbest(parts, eos_params):
  """Forced length 7 even for the EOS-biased model: no EOS, 4 distinct hypotheses
  sorted by score, each score the teacher-forced log-probability over penalty(7)."""
  graphdef, _ = parts
  inputs, forced = sources(3, [6, 2, 9], 9), 7
  out = beam_search(graphdef, eos_params, inputs, ALPHA, A, B,
                                 forced_len=forced, **search)
  assert int(out.steps) == forced
  tokens = np.asarray(out.tokens)  # [3, 4, 12]
  assert np.all(np.asarray(out.lengths) == forced)
  assert np.all(tokens[..., :forced] > EOS) and not np.any(tokens[..., forced:])
  scores = np.asarray(out.scores)
  assert np.all(np.diff(scores, axis=1) <= 0)
  for row in tokens:
    assert len({tuple(seq) for seq in row}) == BEAM
  targets = tokens.reshape(-1, MAX_DECODE_LEN)
  logp = log_probs(graphdef, eos_params, np.repeat(inputs, BEAM, 0), targets)
  sums = np.take_along_axis(logp, targets[..., None], -1)[..., 0][:, :forced].sum(-1)
  np.testing.assert_allclose(sums.reshape(3, BEAM) / penalty(forced, ALPHA), scores,
                             atol=TOL)


def test_early_stop(parts, eos_params):
  """EOS-biased model: the loop ends long before the max length (8) with the same
  n-best as the reference search that runs to the max length."""
  graphdef, _ = parts
  out = beam_search(graphdef, eos_params, SENTENCE[None], 1.0, A, B,
                                 **search)
  assert int(out.steps) <= 4
  got = as_lists(out, 0)
  assert len(got[0][1]) == 2 and got[0][1][-1] == EOS  # One word (none is empty).
  assert_same_nbest(got, beam_reference(graphdef, eos_params, SENTENCE, BEAM, 1.0, 8))


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 0.6, 2.0])
def test_live_score_bound_is_the_best_reachable_score(alpha):
  """The early-stop bound equals the best s / penalty(L) over the lengths L still
  reachable, (length, max_len], per sentence; -inf when nothing is live."""
  alive_logp = np.array([[-2.0, -0.5, -np.inf], [-3.0, -1.0, -4.0],
                         [-np.inf] * 3], np.float32)  # [batch, beam]
  length, max_len = 3, np.array([4, 12, 9], np.int32)
  bound = live_score_bound(jnp.asarray(alive_logp), jnp.asarray(length),
                                    jnp.asarray(max_len), jnp.float32(alpha))
  expected = [max(s / penalty(n, alpha) for s in row for n in range(length + 1, m + 1))
              for row, m in zip(alive_logp, max_len)]
  np.testing.assert_allclose(bound, expected, rtol=1e-6)


def test_bad_arguments(parts):
  graphdef, params = parts
  args = (graphdef, params, SENTENCE[None], ALPHA, A, B)
  with pytest.raises(ValueError, match="nbest"):
    decoding.beam_search(*args, eos_id=EOS, beam_size=2, nbest=3, max_decode_len=4)
  with pytest.raises(ValueError, match="forced_len"):
    decoding.beam_search(*args, eos_id=EOS, beam_size=2, max_decode_len=4, forced_len=5)
  with pytest.raises(ValueError, match="max_len"):
    decoding.beam_search(*args, eos_id=EOS, beam_size=2, max_decode_len=65)


def _decoders(partitioner):
  """(segmented, one-call) Decoders of the tests' search settings."""
  settings = DecodeSettings(beam_size=BEAM, alpha=ALPHA, max_len_a=A, max_len_b=B)
  return [Decoder(partitioner, settings, max_len=MAX_DECODE_LEN, nbest=BEAM,
                  compact=compact) for compact in (True, False)]


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 1, 1), (4, 2, 1)])
def test_segments_dropping_done_sentences_match_the_one_call_search(parts, eos_params,
                                                                     mesh_shape):
  """8 sentences of different max lengths: the segmented search (done sentences
  dropped as it goes) gives every sentence the one-call search's n-best, on one
  device and with the batch split over two (each CPU device runs its own thread)
  or eight (there no segment can halve: 4 rows would not split over 8 shards)."""
  graphdef, params = parts
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  partitioner = Partitioner(mesh_lib.create_mesh(mesh_shape, devices))
  segmented, plain = _decoders(partitioner)
  takes = []
  segmented._take = lambda seg, index, take=segmented._take: takes.append(
      len(index)) or take(seg, index)
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  for p in (params, eos_params):
    got, expected = (d.bind(graphdef, p)(batch) for d in (segmented, plain))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], atol=TOL)
  if partitioner.batch_shards() < len(batch):
    assert takes and min(takes) < len(batch)  # Sentences were dropped on the way.
  else:
    assert not takes


@pytest.mark.parametrize("compact", [True, False])
def test_an_fsdp_mesh_pads_an_uneven_batch_and_reads_whole_parameters(parts, alone,
                                                                      compact):
  """3 sentences on a ('data', 'fsdp') = (2, 4) mesh: the search runs on 8 rows (an
  uneven batch would reshard its state at every step) over parameters whole across
  'fsdp' (else gathered at every step); 3 rows come back, as on one device."""
  graphdef, params = parts
  partitioner = Partitioner(mesh_lib.create_mesh((2, 4, 1)))
  decoder = Decoder(partitioner, DecodeSettings(beam_size=BEAM, alpha=ALPHA,
                                                max_len_a=A, max_len_b=B),
                    max_len=MAX_DECODE_LEN, nbest=BEAM, compact=compact)
  seen = []
  for name in ("_search", "_begin"):
    setattr(decoder, name, lambda g, p, inputs, *a, _f=getattr(decoder, name), **k: (
        seen.append((inputs.shape, {x.sharding.spec for x in jax.tree.leaves(p)})),
        _f(g, p, inputs, *a, **k))[1])
  fsdp_params = jax.device_put(params, partitioner.state_shardings(params))
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(fsdp_params))
  batch = np.stack([NEIGHBOURS[0], np.pad(SENTENCE, (0, 5)), NEIGHBOURS[1]])
  tokens, scores = decoder.bind(graphdef, fsdp_params)(batch)
  assert tokens.shape[:2] == (3, BEAM) and scores.shape == (3, BEAM)
  ((shape, specs),) = seen
  assert shape[0] == 8 and not any("fsdp" in str(spec) for spec in specs)
  np.testing.assert_array_equal(tokens[1], np.asarray(alone.tokens)[0])
  np.testing.assert_allclose(scores[1], np.asarray(alone.scores)[0], atol=TOL)


def test_warmup_compiles_every_segment_program_a_batch_shape_can_need(parts):
  """After a warm-up call on one-token sentences (done at once), batches of that
  shape whose sentences finish at different steps compile nothing new."""
  graphdef, params = parts
  partitioner = Partitioner(mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  segmented, _ = _decoders(partitioner)
  decode = segmented.bind(graphdef, params)
  batch = np.insert(NEIGHBOURS, 5, np.pad(SENTENCE, (0, 5)), axis=0)
  dummy = np.zeros_like(batch)
  dummy[:, 0] = EOS
  decode(dummy, warmup=True)
  programs = [f.jitted._cache_size() for f in (segmented._begin, segmented._continue,
                                               segmented._take)]
  for rows in (batch, batch[::-1], np.roll(batch, 3, axis=0)):
    decode(rows)
  assert [f.jitted._cache_size() for f in (segmented._begin, segmented._continue,
                                           segmented._take)] == programs
