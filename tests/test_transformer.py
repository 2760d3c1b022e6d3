"""Transformer: shapes, masks (causal, padding, packing), incremental decoding, dropout,
dtypes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data.tokenizer import EOS_ID, PAD_ID
from models import Transformer, TransformerConfig

VOCAB = 64
TOL = 1e-5  # fp32: masked-out positions get exactly zero attention weight.


def tiny_config(**overrides) -> TransformerConfig:
  fields = dict(vocab_size=VOCAB, pad_id=PAD_ID, emb_dim=32, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, qkv_dim=32, mlp_dim=64, max_len=64)
  return TransformerConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model() -> Transformer:
  return Transformer(tiny_config(), rngs=nnx.Rngs(0))


# One jitted forward for all tests: equal shapes reuse its compilation (eager NNX
# would compile every op for every new shape, several times slower here).
forward = nnx.jit(lambda model, inputs, targets, **kw: model(inputs, targets, **kw),
                  static_argnames="deterministic")
encode = nnx.jit(lambda model, inputs: model.encode(inputs))


def tokens(seed: int, shape) -> jax.Array:
  """Random ids avoiding pad and eos."""
  first_word = max(PAD_ID, EOS_ID) + 1
  return jnp.asarray(np.random.RandomState(seed).randint(first_word, VOCAB, shape),
                     jnp.int32)


def test_shapes_and_dtypes(model):
  inputs, targets = tokens(0, (2, 7)), tokens(1, (2, 5))
  logits = forward(model, inputs, targets)
  assert logits.shape == (2, 5, VOCAB) and logits.dtype == jnp.float32
  assert encode(model, inputs).shape == (2, 7, 32)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("pre_ln,share", [(True, True), (False, False)])
def test_causal(pre_ln, share):
  model = Transformer(tiny_config(pre_layer_norm=pre_ln, share_embeddings=share),
                      rngs=nnx.Rngs(0))
  inputs, targets, t = tokens(0, (2, 7)), tokens(1, (2, 5)), 2
  changed = targets.at[:, t].set((targets[:, t] + 7) % (VOCAB - 2) + 2)
  before, after = forward(model, inputs, targets), forward(model, inputs, changed)
  # Logits at position p are predicted from targets[:p]: token t reaches only p > t.
  np.testing.assert_allclose(before[:, :t + 1], after[:, :t + 1], atol=TOL)
  assert np.abs(before[:, t + 1:] - after[:, t + 1:]).min(axis=-1).max() > 1e-3


def test_padding_does_not_change_logits(model):
  inputs, targets = tokens(0, (2, 7)), tokens(1, (2, 5))
  logits = forward(model, inputs, targets)
  padded = forward(model, jnp.pad(inputs, ((0, 0), (0, 4))),
                   jnp.pad(targets, ((0, 0), (0, 3))))
  np.testing.assert_allclose(padded[:, :5], logits, atol=TOL)
  # And the source really is attended to: changing it changes the logits.
  assert np.abs(forward(model, inputs.at[:, 2].set(5), targets) - logits).max() > 1e-3


def test_packing_matches_separate_pairs(model):
  (src_a, tgt_a), (src_b, tgt_b) = (tokens(2, (5,)), tokens(3, (4,))), \
                                   (tokens(4, (6,)), tokens(5, (3,)))

  def pack(a, b, length):
    row = jnp.zeros(length, jnp.int32).at[:len(a)].set(a)
    row = row.at[len(a):len(a) + len(b)].set(b)
    seg = np.zeros(length, np.int32)
    seg[:len(a)], seg[len(a):len(a) + len(b)] = 1, 2
    pos = np.zeros(length, np.int32)
    pos[:len(a)], pos[len(a):len(a) + len(b)] = np.arange(len(a)), np.arange(len(b))
    return row[None], jnp.asarray(seg)[None], jnp.asarray(pos)[None]

  inputs, in_seg, in_pos = pack(src_a, src_b, 13)
  targets, tgt_seg, tgt_pos = pack(tgt_a, tgt_b, 9)
  packed = forward(model, inputs, targets, inputs_segment_ids=in_seg,
                   targets_segment_ids=tgt_seg,
                 inputs_positions=in_pos, targets_positions=tgt_pos)[0]
  alone_a = forward(model, src_a[None], tgt_a[None])[0]
  alone_b = forward(model, src_b[None], tgt_b[None])[0]
  np.testing.assert_allclose(packed[:4], alone_a, atol=TOL)
  np.testing.assert_allclose(packed[4:7], alone_b, atol=TOL)


def test_decode_step_matches_teacher_forcing(model):
  """A jitted fori_loop over decode_step reproduces the full forward pass."""
  inputs = tokens(0, (3, 7)).at[1, 4:].set(0)  # Row 1 has source padding.
  targets, max_decode_len = tokens(1, (3, 6)), 8
  expected = forward(model, inputs, targets)
  decoder_input = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # Start token 0.
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, inputs, decoder_input):
    m = nnx.merge(graphdef, state)
    cross_kv = m.precompute_cross_kv(m.encode(inputs))  # Once per sentence.
    src_mask = inputs != 0
    logits = jnp.zeros(decoder_input.shape + (VOCAB,))

    def body(t, carry):
      cache, logits = carry
      step_logits, cache = m.decode_step(decoder_input[:, t], t, cache, cross_kv,
                                         src_mask)
      return cache, logits.at[:, t].set(step_logits)

    cache = m.init_cache(inputs.shape[0], max_decode_len)
    return jax.lax.fori_loop(0, decoder_input.shape[1], body, (cache, logits))

  cache, logits = run(state, inputs, decoder_input)
  np.testing.assert_allclose(logits, expected, atol=TOL)
  assert cache.v[0].shape == (3, 4, max_decode_len, 8)  # [batch, heads, length, dim]
  assert cache.k[0].shape == (3, 4, 8, max_decode_len)  # Keys transposed.
  assert not np.any(cache.v[0][:, :, 6:]) and np.all(np.any(cache.v[0][:, :, :6],
                                                            axis=-1))
  assert not np.any(cache.k[0][..., 6:]) and np.all(np.any(cache.k[0][..., :6], axis=2))


def test_dropout_only_when_not_deterministic():
  # One layer each: every dropout site adds a PRNG kernel to compile.
  model = Transformer(tiny_config(num_encoder_layers=1, num_decoder_layers=1,
                                  dropout_rate=0.3, attention_dropout_rate=0.3),
                      rngs=nnx.Rngs(0))
  inputs, targets = tokens(0, (2, 7)), tokens(1, (2, 5))
  eval_logits = forward(model, inputs, targets)  # deterministic=True is the default.
  # The model holds no RNG state: its whole state is its parameters.
  assert set(nnx.state(model).keys()) == set(nnx.state(model, nnx.Param).keys())
  train = [forward(model, inputs, targets, deterministic=False, rngs=nnx.Rngs(dropout=s))
           for s in (7, 7, 8)]
  np.testing.assert_array_equal(train[0], train[1])  # Same key, same masks.
  assert np.abs(train[0] - eval_logits).max() > 1e-3
  assert np.abs(train[0] - train[2]).max() > 1e-3


def test_bf16_compute_with_fp32_params():
  fp32 = Transformer(tiny_config(), rngs=nnx.Rngs(0))
  bf16 = Transformer(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
  params = nnx.state(bf16, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  inputs, targets = tokens(0, (2, 7)), tokens(1, (2, 5))
  encoded, logits = encode(bf16, inputs), forward(bf16, inputs, targets)
  assert encoded.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  # Same weights, bf16 arithmetic: close to fp32 (logits are O(1)), not equal.
  diff = np.abs(logits - forward(fp32, inputs, targets)).max()
  assert 0 < diff < 0.1


def test_from_config():
  model_cfg = ml_collections.ConfigDict(dict(
      emb_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, qkv_dim=32,
      mlp_dim=64, max_len=64, dropout_rate=0.1, attention_dropout_rate=0.1,
      share_embeddings=True, pre_layer_norm=True, dtype="float32",
      param_dtype="float32"))
  cfg = TransformerConfig.from_config(model_cfg, vocab_size=VOCAB, pad_id=PAD_ID)
  assert cfg.vocab_size == VOCAB and cfg.num_encoder_layers == 1
  assert cfg.with_dtype("bfloat16").param_dtype == "bfloat16"
  model_cfg.emb_size = 3
  with pytest.raises(ValueError, match="emb_size"):
    TransformerConfig.from_config(model_cfg, vocab_size=VOCAB, pad_id=PAD_ID)
  with pytest.raises(ValueError, match="num_heads"):
    tiny_config(qkv_dim=30)
