"""Decode-latency benchmark: jitted beam search on synthetic sources, JSON lines out.

  python -m bench.decode --config=configs/transformer_base.py --batch_sizes=1,8,32
  python -m bench.decode --workdir=DIR --quantize=int8   # A trained checkpoint.

Protocol: sources of --src_len random tokens, output forced to --forced_len tokens with
EOS suppressed (identical work for every decoder), a sweep of batch sizes; the first
call (compilation included) is reported apart from the median of --repeats timed
calls. Random weights (--config) need JAX and Flax only: no data pipeline, no TFDS.
"""
import dataclasses
import json

from absl import app
from absl import flags
import jax
import numpy as np

from bench import timing
from bench.synthetic import synthetic_sources
from cli import inference_flags
from data import tokenizer as tokenizer_lib
from inference import restore
from models import decoding
from models import quantization
from models import transformer
from parallel.sharding import Partitioner

inference_flags.define_checkpoint()
inference_flags.define_random_weights()
inference_flags.define_precision()
inference_flags.define_decode(lengths=False)
inference_flags.define_compilation_cache()
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes.")
_SRC_LEN = flags.DEFINE_integer("src_len", 32, "Source length, EOS included.")
_FORCED_LEN = flags.DEFINE_integer("forced_len", 64, "Output length, EOS suppressed; 0"
                                   " lets the model stop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per batch size.")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What every batch size decodes: the sources' length, the output's, the search."""
  src_len: int
  forced_len: int | None  # None: the model stops at EOS.
  beam_size: int
  alpha: float
  repeats: int  # Timed calls after the compiling one.

  @property
  def max_decode_len(self) -> int:
    return max(self.forced_len or 0, 2 * self.src_len)


def time_batch(model: restore.Restored, partitioner: Partitioner, batch: int,
               protocol: Protocol) -> dict:
  """Times the search of `batch` synthetic sources; one result dict."""
  search = decoding.jit_beam_search(partitioner)
  inputs = synthetic_sources(batch, protocol.src_len, model.model_config.vocab_size)
  inputs = jax.device_put(inputs, partitioner.batch_sharding(inputs.shape))

  def decode():
    return search(model.graphdef, model.params, inputs, protocol.alpha, 1.5, 10.0,
                  eos_id=tokenizer_lib.EOS_ID, beam_size=protocol.beam_size,
                  max_decode_len=protocol.max_decode_len,
                  forced_len=protocol.forced_len)

  result = timing.time_calls(decode, protocol.repeats)
  median, out = result.median_s, result.output
  output_tokens = int(np.asarray(out.lengths)[:, 0].sum())
  return {
      "batch_size": batch, "beam_size": protocol.beam_size,
      "src_len": protocol.src_len, "forced_len": protocol.forced_len,
      "first_call_s": round(result.first_s, 3), "median_s": round(median, 4),
      "p50_ms": round(1000 * median, 2),
      "p90_ms": round(result.percentile_ms(90), 2),
      "p99_ms": round(result.percentile_ms(99), 2),
      "ms_per_sentence": round(1000 * median / batch, 3),
      "sentences_per_s": round(batch / median, 2),
      "output_tokens_per_s": round(output_tokens / median, 1),
      "decoder_steps": int(out.steps), "repeats": protocol.repeats,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  inference_flags.enable_compilation_cache()
  config, partitioner, model = inference_flags.checkpoint_or_random(
      "bench.decode", inference_flags.quantize())
  settings = inference_flags.decode_settings(config)
  protocol = Protocol(src_len=_SRC_LEN.value, forced_len=_FORCED_LEN.value or None,
                      beam_size=settings.beam_size, alpha=settings.alpha,
                      repeats=_REPEATS.value)
  # Of the float model: a quantized one also holds scales (and a lookup table).
  parameters = transformer.count_params(
      partitioner.abstract_params(model.model_config.make_model())[1])
  facts = {"parameters": parameters, "dtype": model.model_config.dtype,
           "quantize": flags.FLAGS.quantize,
           "weight_bytes": quantization.weight_bytes(model.params),
           "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
           "jax": jax.__version__}
  for batch in (int(b) for b in _BATCH_SIZES.value):
    print(json.dumps({**time_batch(model, partitioner, batch, protocol), **facts}),
          flush=True)


if __name__ == "__main__":
  app.run(main)
