"""Decode-latency benchmark: jitted beam search on synthetic sources, JSON lines out.

Protocol: sources of `src_len` random tokens, output forced to `forced_len` tokens with
EOS suppressed (identical work for every decoder), a sweep of batch sizes; the first
call (compilation included) is reported apart from the median of `repeats` timed
calls. Needs JAX and Flax only: no data pipeline, no TFDS. Run by
`infer.py --mode=benchmark`.
"""
from collections.abc import Iterator, Sequence

from flax import nnx
import jax
import numpy as np

from bench import timing
from data import tokenizer as tokenizer_lib
from models import decoding
from parallel.sharding import Partitioner

_FIRST_WORD_ID = max(tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID,
                     tokenizer_lib.UNK_ID) + 1


def synthetic_sources(batch: int, src_len: int, vocab_size: int, seed: int = 0
                      ) -> np.ndarray:
  """[batch, src_len] int32: random non-special tokens ending in EOS, no padding."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(_FIRST_WORD_ID, vocab_size, (batch, src_len), dtype=np.int32)
  inputs[:, -1] = tokenizer_lib.EOS_ID
  return inputs


def run(graphdef: nnx.GraphDef, params: nnx.State, partitioner: Partitioner, *,
        vocab_size: int, batch_sizes: Sequence[int], src_len: int,
        forced_len: int | None, beam_size: int, alpha: float, max_decode_len: int,
        repeats: int) -> Iterator[dict]:
  """Yields one result dict per batch size."""
  search = decoding.jit_beam_search(partitioner)
  for batch in batch_sizes:
    inputs = synthetic_sources(batch, src_len, vocab_size)
    inputs = jax.device_put(inputs, partitioner.batch_sharding(inputs.shape))

    def decode():
      return search(graphdef, params, inputs, alpha, 1.5, 10.0,
                    eos_id=tokenizer_lib.EOS_ID, beam_size=beam_size,
                    max_decode_len=max_decode_len, forced_len=forced_len)

    result = timing.time_calls(decode, repeats)
    median, out = result.median_s, result.output
    output_tokens = int(np.asarray(out.lengths)[:, 0].sum())
    yield {
        "batch_size": batch, "beam_size": beam_size, "src_len": src_len,
        "forced_len": forced_len, "first_call_s": round(result.first_s, 3),
        "median_s": round(median, 4),
        "p50_ms": round(1000 * median, 2),
        "p90_ms": round(result.percentile_ms(90), 2),
        "p99_ms": round(result.percentile_ms(99), 2),
        "ms_per_sentence": round(1000 * median / batch, 3),
        "sentences_per_s": round(batch / median, 2),
        "output_tokens_per_s": round(output_tokens / median, 1),
        "decoder_steps": int(out.steps), "repeats": repeats,
    }
