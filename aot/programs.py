"""The project's programs as lowered computations on abstract inputs: no array exists.

Training comes from `training.state.build_program` (the train step with its donated
state, the eval step); decoding from `models.decoding.jit_beam_search`, as
`inference.decoder.Decoder` calls it, on abstract parameters in the serving dtype.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from data import tokenizer as tokenizer_lib
from inference import decoder as decoder_lib
from inference.decoder import DecodeSettings
from models import decoding
from models import transformer
from parallel.sharding import Partitioner
from training import state as state_lib

BATCH_KEYS = ("inputs", "targets", "inputs_segment_ids", "targets_segment_ids",
              "inputs_positions", "targets_positions")


@dataclasses.dataclass(frozen=True)
class Lowered:
  """One lowered program and what the report needs to know about its work."""
  name: str  # 'train_step', 'eval_step' or 'beam_search'.
  lowered: jax.stages.Lowered
  shape: dict  # Batch and length of the program's input.
  # 6 * params * tokens (train step), 2 * params * tokens (eval step), tokens being
  # rows * length of one side; None for the search, whose loop length is data-driven.
  model_flops: float | None
  extra: dict = dataclasses.field(default_factory=dict)


def abstract_batch(partitioner: Partitioner, rows: int, length: int) -> dict:
  """A packed batch's ShapeDtypeStructs, [rows, length] int32, laid out for the mesh."""
  sharding = partitioner.batch_sharding((rows, length))
  return {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding)
          for k in BATCH_KEYS}


def _model_config(config, vocab_size: int, dtype: str | None = None):
  return transformer.TransformerConfig.from_config(
      config.model, vocab_size=vocab_size, pad_id=tokenizer_lib.PAD_ID
  ).with_dtype(dtype)


def training_programs(config, vocab_size: int, partitioner: Partitioner
                      ) -> list[Lowered]:
  """The train step (state donated) and the eval step, lowered on abstract inputs."""
  program = state_lib.build_program(config, vocab_size, partitioner)
  params = transformer.count_params(program.abstract.params)
  rows, length = config.batch_tokens // config.data.max_length, config.data.max_length
  eval_length = config.data.eval_max_length
  with partitioner.activate():
    train = program.train_step.jitted.lower(
        program.abstract, abstract_batch(partitioner, rows, length))
    evaluate = program.eval_step.jitted.lower(
        program.abstract.params, abstract_batch(partitioner, rows, eval_length))
  return [Lowered("train_step", train, {"batch": rows, "length": length},
                  6 * params * rows * length, {"params": params}),
          Lowered("eval_step", evaluate, {"batch": rows, "length": eval_length},
                  2 * params * rows * eval_length, {"params": params})]


def decode_cache_bytes(model_cfg, batch: int, max_decode_len: int,
                       beam_size: int) -> int:
  """Bytes of the self-attention cache `Transformer.init_cache` allocates."""
  model = nnx.eval_shape(model_cfg.make_model())
  cache = jax.eval_shape(lambda: model.init_cache(batch, max_decode_len, beam_size))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def beam_search(config, vocab_size: int, partitioner: Partitioner, *, batch: int,
                src_len: int, dtype: str | None = None,
                settings: DecodeSettings | None = None) -> Lowered:
  """The jitted beam search for `batch` sources of `src_len` tokens, lowered.

  The output limit is `Decoder`'s: min(model.max_len, ceil(a * src_len + b)).
  `dtype` casts parameters and compute as `restore_params(dtype=...)` does.
  """
  settings = settings or DecodeSettings.from_config(config.get("decode"))
  model_cfg = _model_config(config, vocab_size, dtype)
  graphdef, params = partitioner.abstract_params(model_cfg.make_model())
  # Laid out and padded as `Decoder` does it before the search.
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, decoder_lib.serving_layout(partitioner, params))
  batch = decoder_lib.rows_for_shards(batch, partitioner.batch_shards())
  max_decode_len = settings.cache_length(src_len, model_cfg.max_len)
  inputs = jax.ShapeDtypeStruct((batch, src_len), jnp.int32,
                                sharding=partitioner.batch_sharding((batch, src_len)))
  search = decoding.jit_beam_search(partitioner)
  with partitioner.activate():
    lowered = search.jitted.lower(
        graphdef, params, inputs, float(settings.alpha), float(settings.max_len_a),
        float(settings.max_len_b), eos_id=tokenizer_lib.EOS_ID,
        beam_size=settings.beam_size, max_decode_len=max_decode_len, nbest=1)
  n = transformer.count_params(params)
  return Lowered(
      "beam_search", lowered,
      {"batch": batch, "length": src_len, "beam_size": settings.beam_size,
       "max_decode_len": max_decode_len},
      None,
      {"params": n, "dtype": model_cfg.dtype,
       "kv_cache_bytes": decode_cache_bytes(model_cfg, batch, max_decode_len,
                                            settings.beam_size)})
