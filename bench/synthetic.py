"""Synthetic decoder inputs, the same for every benchmark and engine."""
import numpy as np

from data import tokenizer as tokenizer_lib

_FIRST_WORD_ID = max(tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID,
                     tokenizer_lib.UNK_ID) + 1


def synthetic_sources(batch: int, src_len: int, vocab_size: int, seed: int = 0
                      ) -> np.ndarray:
  """[batch, src_len] int32: random non-special tokens ending in EOS, no padding."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(_FIRST_WORD_ID, vocab_size, (batch, src_len), dtype=np.int32)
  inputs[:, -1] = tokenizer_lib.EOS_ID
  return inputs
