"""Alignments from cross-attention (models/alignment.py): the weights are the model's
own, and the hard alignment and its Pharaoh format by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import alignment
from tests.test_decoding import EOS, PAD_ID, sources, tiny_model


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_weights_are_the_decoders_own_cross_attention(layer, monkeypatch):
  """Every softmax of a teacher-forced forward pass is recorded: the encoder's 2,
  then per decoder layer self- then cross-attention. The chosen layer's cross
  weights, heads averaged, are what `cross_attention` returns."""
  model = tiny_model()
  graphdef, params = nnx.split(model)
  inputs = jnp.asarray(sources(1, [6, 3], 6))
  targets = jnp.asarray(np.array([[5, 7, 9, EOS, PAD_ID], [4, EOS, PAD_ID, PAD_ID,
                                                             PAD_ID]], np.int32))
  seen, softmax = [], jax.nn.softmax
  monkeypatch.setattr(jax.nn, "softmax", lambda x, axis=-1: seen.append(
      softmax(x, axis=axis)) or seen[-1])
  model(inputs, targets)
  monkeypatch.undo()
  index = 2 + 2 * (layer % 2) + 1
  want = np.asarray(seen[index]).mean(axis=1)  # [batch, tgt, src]
  got = np.asarray(alignment.cross_attention(graphdef, params, inputs, targets,
                                             layer=layer))
  assert got.shape == (2, 5, 6)
  valid = np.asarray(targets != PAD_ID)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-6)
  np.testing.assert_allclose(got[valid].sum(-1), 1.0, atol=1e-5)
  assert np.all(got[1][:, 3:][valid[1]] < 1e-6)  # Source padding gets nothing.


def test_hard_alignment_and_pharaoh_by_hand():
  weights = np.array([[0.1, 0.7, 0.2, 0.0],   # target 0 -> source 1
                      [0.2, 0.1, 0.6, 0.1],   # target 1 -> 0 (2 is EOS, 3 padding)
                      [0.5, 0.1, 0.1, 0.3],   # target 2 -> source 0
                      [0.1, 0.1, 0.1, 0.7]])  # target 3 is EOS: no link
  source = [11, 12, EOS]  # 3 tokens, a padded column after them.
  target = [21, 22, 23, EOS]
  pairs = alignment.hard_alignment(weights, source, target, (EOS, PAD_ID))
  assert pairs == [(1, 0), (0, 1), (0, 2)]  # Target 1: source 0, its best but EOS.
  assert alignment.pharaoh(pairs) == "1-0 0-1 0-2"
