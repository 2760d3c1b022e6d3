"""int8 inference (models/quantization.py): error bounds, the int8 dot XLA compiles,
and agreement with float32 on a trained model through the Translator and infer.py."""
import json
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import datasets
from data import tokenizer as tokenizer_lib
from inference import bucketing
from inference.translator import Translator
from models import decoding
from models import quantization
from models import transformer
from tests.conftest import REPO
from tests.conftest import train_smoke

MODES = quantization.MODES


def int8_paths(params: nnx.State) -> list[str]:
  """Paths of the int8 arrays in `params`."""
  return [jax.tree_util.keystr(path) for path, x in
          jax.tree_util.tree_leaves_with_path(params) if x.dtype == jnp.int8]


def tiny(share_embeddings: bool = True) -> transformer.TransformerConfig:
  return transformer.TransformerConfig(
      vocab_size=300, pad_id=0, emb_dim=32, num_heads=4, num_encoder_layers=2,
      num_decoder_layers=2, qkv_dim=32, mlp_dim=64, max_len=64,
      share_embeddings=share_embeddings)


def test_weights_round_trip_within_half_a_step_per_channel():
  rng = np.random.default_rng(0)
  # Channels of very different magnitudes, and one all zero.
  w = rng.normal(size=(64, 5)) * np.array([1e-3, 1.0, 50.0, 0.1, 0.0])
  q, scale = quantization.quantize_weight(jnp.asarray(w, jnp.float32))
  assert q.dtype == jnp.int8 and scale.shape == (5,)
  error = np.abs(np.asarray(q, np.float32) * np.asarray(scale) - w)
  assert np.all(error <= np.asarray(scale) / 2 + 1e-7)
  # Per channel: the largest weight of each non-zero channel maps to +-127.
  assert np.all(np.abs(np.asarray(q))[:, :4].max(axis=0) == 127)
  assert np.all(np.asarray(q)[:, 4] == 0)


@pytest.mark.parametrize("quantize_inputs", [True, False])
def test_int8_dot_is_close_to_the_float_dot(quantize_inputs):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 7, 128)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(128, 40)), jnp.float32)
  q, scale = quantization.quantize_weight(w)
  got = quantization.int8_dot(x, q, scale, quantize_inputs=quantize_inputs)
  want = x @ w
  # Relative to the output's scale, rounding both operands to int8 steps gives
  # an RMS error near 0.01 (measured 0.009 and 0.006) and a max near 3.4 times it.
  error = (got - want) / jnp.std(want)
  assert float(jnp.sqrt(jnp.mean(error**2))) < 0.02
  assert float(jnp.max(jnp.abs(error))) < 0.06
  zero = quantization.int8_dot(jnp.zeros((2, 128)), q, scale,
                               quantize_inputs=quantize_inputs)
  assert np.all(np.asarray(zero) == 0)  # An all-zero row: no division by zero.


@pytest.mark.parametrize("share_embeddings", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_model_logits_are_close_to_float(mode, share_embeddings):
  model = tiny(share_embeddings).make_model()()
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(2)
  inputs = jnp.asarray(rng.integers(3, 300, (4, 10)), jnp.int32)
  targets = jnp.asarray(rng.integers(3, 300, (4, 9)), jnp.int32)
  want = nnx.merge(graphdef, params)(inputs, targets)
  q_graphdef, q_params = quantization.quantize(graphdef, params, mode)
  got = nnx.merge(q_graphdef, q_params)(inputs, targets)
  assert float(jnp.max(jnp.abs(got - want)) / jnp.std(want)) < 0.1
  # Every dense kernel is int8: 4 per attention, 2 per MLP, and the output table
  # (with untied embeddings, the source and target lookup tables too).
  layers = 2 * (4 + 2) + 2 * (4 + 4 + 2) + (1 if share_embeddings else 3)
  assert len(int8_paths(q_params)) == layers
  # Embedding lookups read the int8 tables too: no float [vocab, embed] table is
  # left, so the model stores about a byte per parameter (a third of float32 even
  # at this width, where the float scales, biases and norms weigh most).
  tables = [k for k, x in jax.tree_util.tree_leaves_with_path(q_params)
            if x.dtype != jnp.int8 and sorted(x.shape) == [32, 300]]
  assert not tables, f"float lookup tables kept: {tables}"
  assert quantization.weight_bytes(q_params) < quantization.weight_bytes(params) / 3
  # The decoder's output table is the int8 one, not a float table rebuilt per call.
  table = nnx.merge(q_graphdef, q_params).output_table()
  assert table.kernel.dtype == jnp.int8 and table.scale is not None


def test_unknown_mode_is_refused():
  graphdef, params = nnx.split(tiny().make_model()())
  with pytest.raises(ValueError, match="int8"):
    quantization.quantize(graphdef, params, "int4")
  assert quantization.quantize(graphdef, params, None) == (graphdef, params)


def test_xla_compiles_an_int8_dot_in_the_beam_search():
  """The int8 path is the one XLA runs: s8 x s8 -> s32 dots, not a float upcast."""
  graphdef, params = quantization.quantize(*nnx.split(tiny().make_model()()), "int8")
  inputs = jnp.ones((2, 8), jnp.int32)
  hlo = decoding.beam_search_jit.lower(
      graphdef, params, inputs, 0.6, 1.5, 10.0, eos_id=1, beam_size=2,
      max_decode_len=8).compile().as_text()
  # e.g. `%dot.102 = s32[4,300]{1,0} dot(...)`, or a library (YNNPACK) fusion of it.
  int8_dots = re.findall(r"= s32\[[\d,]+\]\S* (?:dot|fusion)\(", hlo)
  # One per dense layer in the loop: self-attention 4, cross-attention 2 (its K/V
  # are projected before the loop), MLP 2, per decoder layer, and the output table.
  assert len(int8_dots) >= 2 * (4 + 2 + 2) + 1, "the decoder's dots are not int8"


@pytest.fixture(scope="module")
def small_trained_workdir(prepared, tmp_path_factory):
  """The smoke model after 600 steps: it translates into varied words, so agreement
  between int8 and float32 means something (the 4-step one repeats one token)."""
  return train_smoke(prepared, tmp_path_factory.mktemp("trained600"),
                     num_train_steps=600, checkpoint_every_steps=600,
                     eval_every_steps=1000, log_every_steps=100)


@pytest.fixture(scope="module")
def validation_texts(prepared):
  _, _, sources, _ = prepared
  return datasets.text_pairs(sources["validation"], "en", "fr", limit=48)[0]


def next_token_predictions(translator: Translator, sources, targets) -> np.ndarray:
  """Teacher-forced argmax of every target position: [tokens] over all pairs."""
  src = [translator.tokenizer.encode(t) + [tokenizer_lib.EOS_ID] for t in sources]
  tgt = [list(ids) + [tokenizer_lib.EOS_ID] for ids in targets]
  length = max(map(len, src + tgt))
  inputs = bucketing.pad_batch(src, length, len(src))
  target_ids = bucketing.pad_batch(tgt, length, len(tgt))
  logits = nnx.merge(translator.graphdef, translator.params)(inputs, target_ids)
  return np.asarray(jnp.argmax(logits, -1))[target_ids != tokenizer_lib.PAD_ID]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_trained_model_int8_agrees_with_float32(small_trained_workdir, validation_texts,
                                                mode):
  float32 = Translator.from_workdir(str(small_trained_workdir))
  int8 = Translator.from_workdir(str(small_trained_workdir), quantize=mode)
  translations = float32.translate(validation_texts)
  ids = [t.ids for t in translations]
  assert len({i for row in ids for i in row}) > 10  # Not a degenerate output.
  # Token agreement: fed the float32 translation, int8 predicts the same next token.
  want = next_token_predictions(float32, validation_texts, ids)
  got = next_token_predictions(int8, validation_texts, ids)
  assert np.mean(want == got) >= 0.95  # Measured 0.995 and 0.997.
  # Teacher-forced log-probabilities of those translations, per token.
  targets = [t.text for t in translations]
  gaps = [abs(a.score - b.score) / len(a.token_scores) for a, b in zip(
      float32.score(validation_texts, targets), int8.score(validation_texts, targets))]
  assert max(gaps) < 0.03  # Measured 0.008 (int8) and 0.005 (int8_weights).
  # And the beam search runs on the int8 model: most whole outputs are unchanged
  # (one near-tie flips the rest of a sentence, so this bound is looser).
  same = [t.ids == i for t, i in zip(int8.translate(validation_texts), ids)]
  assert np.mean(same) >= 0.5  # Measured 0.69 (int8) and 0.88 (int8_weights).


@pytest.mark.slow
def test_infer_and_bench_decode_take_quantize(trained_workdir, tmp_path):
  source = tmp_path / "in.en"
  source.write_text("A dog runs.\n\nTwo men talk.\n", encoding="utf-8")
  run = lambda *args: subprocess.run(  # pylint: disable=unnecessary-lambda-assignment
      [sys.executable, *args, f"--workdir={trained_workdir}", "--quantize=int8",
       "--compilation_cache_dir="], cwd=REPO, capture_output=True, text=True,
      check=True)
  out = tmp_path / "out.fr"
  run("infer.py", "--mode=translate", f"--input={source}", f"--output={out}")
  assert len(out.read_text(encoding="utf-8").split("\n")) == 4  # 3 lines and the end.
  bench = run("-m", "bench.decode", "--batch_sizes=2", "--repeats=1", "--forced_len=4",
              "--src_len=4")
  result = json.loads(bench.stdout.strip().splitlines()[-1])
  assert result["quantize"] == "int8" and result["batch_size"] == 2
  # The float lookup table stays: 0.72 of the float32 bytes for this tiny model.
  assert result["weight_bytes"] < 4 * result["parameters"] * 0.8
