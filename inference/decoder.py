"""The jitted beam search over a mesh: token ids in, n-best token ids and scores out.

What to search with (`DecodeSettings`, the run's `config.decode`) and how to call it
(`Decoder.bind`); text, batching and restoring live beside it in inference/.
"""
from collections.abc import Callable
import dataclasses
import math
from typing import Any

from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np

from data import tokenizer as tokenizer_lib
from models import decoding
from parallel.sharding import Partitioner

# decode(inputs [batch, src_len] int32) -> (tokens [batch, nbest, out_len],
#                                           scores [batch, nbest])
DecodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to search: the fields of `config.decode`, saved with the run."""
  beam_size: int = 4  # 1 is greedy.
  alpha: float = 0.6  # GNMT length penalty exponent.
  max_len_a: float = 1.5  # Output limit a * source_len + b tokens, EOS included.
  max_len_b: float = 10.0

  @classmethod
  def from_config(cls, decode_cfg: Any | None, **overrides) -> "DecodeSettings":
    """From `config.decode`, with the `overrides` that are not None replacing fields.

    A run saved before that block existed gets the defaults.
    """
    fields = {} if decode_cfg is None else dict(
        decode_cfg.to_dict() if hasattr(decode_cfg, "to_dict") else decode_cfg)
    return cls(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})


def global_batch(partitioner: Partitioner, inputs: np.ndarray) -> jax.Array:
  """`inputs` [rows, ...] as a global array, rows over ('data', 'fsdp') as they divide.

  Every process holds the same `inputs` (multi-host).
  """
  return jax.make_array_from_callback(
      inputs.shape, partitioner.batch_sharding(inputs.shape[:2]), lambda i: inputs[i])


class Decoder:
  """The jitted beam search over a partitioner's mesh, compiled once per shape.

  `bind(graphdef, params)` gives the DecodeFn of one set of parameters; binding new
  parameters of the same structure (e.g. at each validation pass) reuses the
  compilations. A compilation serves one (rows, bucket, beam_size, nbest) and KV cache
  length, static per source bucket: min(max_len, ceil(a * bucket + b)); alpha, a and
  b are traced, so new values of alpha do not recompile.
  """

  def __init__(self, partitioner: Partitioner, settings: DecodeSettings, *,
               max_len: int, nbest: int = 1):
    self.partitioner = partitioner
    self.settings = settings
    self.max_len = max_len
    self.nbest = nbest
    self._search = decoding.jit_beam_search(partitioner)

  def bind(self, graphdef: nnx.GraphDef, params: nnx.State) -> DecodeFn:
    """decode(inputs, settings=None, nbest=None); None: the Decoder's own."""

    def decode(inputs: np.ndarray, settings: DecodeSettings | None = None,
               nbest: int | None = None) -> tuple[np.ndarray, np.ndarray]:
      s = settings or self.settings
      max_decode_len = min(self.max_len, math.ceil(s.max_len_a * inputs.shape[1]
                                                   + s.max_len_b))
      out = self._search(graphdef, params, global_batch(self.partitioner, inputs),
                         float(s.alpha), float(s.max_len_a), float(s.max_len_b),
                         eos_id=tokenizer_lib.EOS_ID, beam_size=s.beam_size,
                         max_decode_len=max_decode_len, nbest=nbest or self.nbest)
      # Every process gets back all rows (multi-host).
      return (multihost_utils.process_allgather(out.tokens, tiled=True),
              multihost_utils.process_allgather(out.scores, tiled=True))
    return decode
