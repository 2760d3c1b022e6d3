"""Property-based tests (hypothesis): invariants over many generated inputs.

Each property runs a modest number of examples (deadline off: the first example of a
jitted property compiles), so the file takes seconds.
"""
import re

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import pipeline
from data import tokenizer as tokenizer_lib
from inference import text_io
from models import search

# 1. Tokenizer round trip.
# Any Unicode text (control characters, emoji, unseen scripts: byte fallback spells
# them) except U+2581 '▁', SentencePiece's own space marker, which decodes to " "
# and so legitimately does not round-trip; surrogates cannot be UTF-8 encoded.
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\u2581"),
               max_size=40)


def normalised(text: str) -> str:
  """What the tokenizer's docstring promises back: space runs collapse, ends strip."""
  return re.sub(" +", " ", text).strip(" ")


@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_tokenizer_round_trip(prepared, text):
  tokenizer = prepared[3]
  ids = tokenizer.encode(text)
  assert tokenizer_lib.PAD_ID not in ids and tokenizer_lib.EOS_ID not in ids
  assert tokenizer.decode(ids) == normalised(text)
  # An eos and pads after it are ignored by decode.
  assert tokenizer.decode(ids + [tokenizer_lib.EOS_ID, 5, 0]) == normalised(text)


# 2. read_lines keeps the line count.
LINE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"),
               max_size=12)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINE, max_size=8), final_newline=st.booleans())
def test_read_lines_keeps_line_count(lines, final_newline):
  # Without a final newline an empty last line is indistinguishable from none,
  # and with one an empty list would read as one empty line: both are excluded.
  if final_newline and not lines:
    lines = [""]
  while not final_newline and lines and lines[-1] == "":
    lines = lines[:-1]
  data = "\n".join(lines) + ("\n" if final_newline else "")
  texts = text_io.read_lines(data.encode("utf-8"), "<test>")
  assert len(texts) == len(lines)
  # read_lines drops a line's trailing "\r" (CRLF files); nothing else changes.
  assert texts == [line.rstrip("\r") for line in lines]


# 3. Packing invariants of the eval pipeline.
MAX_LENGTH, ROWS = 8, 3
IDS = st.lists(st.integers(3, 60), min_size=1, max_size=MAX_LENGTH)


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(IDS, IDS), min_size=1, max_size=10))
def test_packing_loses_nothing_and_segments_are_well_formed(pairs):
  examples = [{"inputs": np.array(i, np.int32), "targets": np.array(t, np.int32)}
              for i, t in pairs]
  ds = pipeline._pack_and_batch(
      grain.MapDataset.source(examples).to_iter_dataset(), batch_size=ROWS,
      max_length=MAX_LENGTH, seed=0, shuffle_bins=False, drop_remainder=False)
  unpacked = []
  for batch in ds:
    for f in pipeline.FEATURES:
      assert batch[f].shape == (ROWS, MAX_LENGTH)
    for row in range(ROWS):
      segments = {}
      for f in pipeline.FEATURES:
        tokens = batch[f][row]
        seg = batch[f + "_segment_ids"][row]
        pos = batch[f + "_positions"][row]
        # Segment id 0 exactly at padding (real ids here are never 0).
        np.testing.assert_array_equal(seg == 0, tokens == tokenizer_lib.PAD_ID)
        k = int(seg.max())
        # Segments 1..k, each one contiguous run, in order, padding at the end.
        used = seg[seg > 0]
        assert sorted(set(used.tolist())) == list(range(1, k + 1))
        assert np.all(np.diff(used) >= 0)
        assert np.all(seg[len(used):] == 0)
        for s in range(1, k + 1):
          # Positions restart at 0 in every segment.
          np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
          segments.setdefault(s, {})[f] = tuple(tokens[seg == s].tolist())
      for s in sorted(segments):
        # Both sides of a pair share its segment id.
        assert set(segments[s]) == set(pipeline.FEATURES)
        unpacked.append((segments[s]["inputs"], segments[s]["targets"]))
  assert sorted(unpacked) == sorted((tuple(i), tuple(t)) for i, t in pairs)


# 4. Beam search invariants on a bigram stub.
PAD, EOS = 0, 1
VOCAB, BATCH, BEAM, NBEST, MAX_LEN = 6, 2, 3, 3, 5


@jax.jit
def _bigram_search(table, alpha):
  """Beam search whose logits are table[previous token]; table is traced, so every
  example reuses one compilation."""
  def step_fn(tokens, t, cache):
    del t
    return table[tokens], cache
  cache = {"rows": jnp.arange(BATCH * BEAM)}
  return search.search(step_fn, cache, jnp.full((BATCH,), MAX_LEN, jnp.int32), alpha,
                       batch=BATCH, beam_size=BEAM, max_decode_len=MAX_LEN,
                       num_steps=MAX_LEN, eos_id=EOS, pad_id=PAD, nbest=NBEST)


LOGIT = st.floats(-6, 6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(table=st.lists(LOGIT, min_size=VOCAB * VOCAB, max_size=VOCAB * VOCAB),
       alpha=st.sampled_from([0.0, 0.6, 1.0]))
def test_beam_search_invariants(table, alpha):
  table = np.array(table, np.float32).reshape(VOCAB, VOCAB)
  out = _bigram_search(jnp.asarray(table), jnp.float32(alpha))
  tokens, scores = np.asarray(out.tokens), np.asarray(out.scores)
  lengths = np.asarray(out.lengths)
  assert tokens.shape == (BATCH, NBEST, MAX_LEN)
  for b in range(BATCH):
    assert np.all(np.diff(scores[b]) <= 0), scores[b]  # Best first.
    for hyp, n in zip(tokens[b], lengths[b]):
      assert n == np.count_nonzero(hyp != PAD)
      assert np.all(hyp[:n] != PAD) and np.all(hyp[n:] == PAD)  # No pad inside.
      # EOS, if present, only ends a hypothesis.
      assert EOS not in hyp[:max(n - 1, 0)].tolist()
