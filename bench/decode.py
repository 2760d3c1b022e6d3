"""Decode-latency benchmark: jitted beam search on synthetic sources, JSON lines out.

Protocol (DESIGN.md): sources of `src_len` random tokens, output forced to
`forced_len` tokens with EOS suppressed (identical work for every decoder), a sweep
of batch sizes; the first call (compilation included) is reported apart from the
median of `repeats` timed calls. Needs JAX and Flax only: no data pipeline, no TFDS.
"""
from collections.abc import Iterator, Sequence
import statistics
import time

from flax import nnx
import jax
import numpy as np

from data import tokenizer as tokenizer_lib
from models import decoding
from models import transformer


def synthetic_sources(batch: int, src_len: int, vocab_size: int, seed: int = 0
                      ) -> np.ndarray:
  """[batch, src_len] int32: random non-special tokens ending in EOS, no padding."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(3, vocab_size, (batch, src_len), dtype=np.int32)
  inputs[:, -1] = tokenizer_lib.EOS_ID
  return inputs


def run(graphdef, params, *, vocab_size: int, batch_sizes: Sequence[int],
        src_len: int, forced_len: int | None, beam_size: int, alpha: float,
        max_decode_len: int, repeats: int, input_sharding=None) -> Iterator[dict]:
  """Yields one result dict per batch size."""
  for batch in batch_sizes:
    inputs = synthetic_sources(batch, src_len, vocab_size)
    if input_sharding is not None:
      inputs = jax.device_put(inputs, input_sharding)

    def decode():
      return decoding.beam_search_jit(
          graphdef, params, inputs, alpha, 1.5, 10.0, beam_size=beam_size,
          max_decode_len=max_decode_len, forced_len=forced_len)

    start = time.perf_counter()
    out = jax.block_until_ready(decode())
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      out = jax.block_until_ready(decode())
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    output_tokens = int(np.asarray(out.lengths)[:, 0].sum())
    yield {
        "batch_size": batch, "beam_size": beam_size, "src_len": src_len,
        "forced_len": forced_len, "first_call_s": round(first_s, 3),
        "median_s": round(median, 4),
        "p50_ms": round(1000 * median, 2),
        "p90_ms": round(1000 * float(np.percentile(times, 90)), 2),
        "p99_ms": round(1000 * float(np.percentile(times, 99)), 2),
        "ms_per_sentence": round(1000 * median / batch, 3),
        "sentences_per_s": round(batch / median, 2),
        "output_tokens_per_s": round(output_tokens / median, 1),
        "decoder_steps": int(out.steps), "repeats": repeats,
    }


def random_model(model_cfg, seed: int = 0):
  """(graphdef, state) of a randomly initialised model: benchmarks need no checkpoint."""
  make = lambda: transformer.Transformer(model_cfg, rngs=nnx.Rngs(seed))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return graphdef, jax.jit(lambda: nnx.split(make())[1])()
