"""This process's training and validation batches, sized for the mesh."""
from collections.abc import Iterator
import dataclasses

import jax
import numpy as np

from data import pipeline
from parallel.sharding import Partitioner


@dataclasses.dataclass(frozen=True)
class Inputs:
  """This process's training batches and validation batches."""
  train_iter: Iterator[dict[str, np.ndarray]]  # Endless; checkpointable (grain).
  eval_batches: list[dict[str, np.ndarray]]  # One pass over its validation shard.


def make_inputs(config, sources, tokenizer, partitioner: Partitioner) -> Inputs:
  """This process's packed training iterator and validation batches.

  `sources` holds the 'train' and 'validation' data sources. Reads
  `config.batch_tokens`, `config.seed` (the shuffle) and `config.data`; a batch has
  as many rows as this process's share of `batch_tokens // data.max_length`.
  """
  data_cfg = config.data
  rows = pipeline.local_batch_size(
      config.batch_tokens, data_cfg.max_length, process_count=jax.process_count(),
      num_batch_shards=(partitioner.batch_sharding().num_devices
                        // partitioner.mesh.shape["tensor"]))
  langs = {"source_lang": data_cfg.source_lang, "target_lang": data_cfg.target_lang}
  train_iter = iter(pipeline.train_dataset(
      sources["train"], tokenizer, batch_size=rows, max_length=data_cfg.max_length,
      seed=config.seed, worker_count=data_cfg.worker_count, **langs))
  eval_batches = list(pipeline.eval_dataset(
      sources["validation"], tokenizer, batch_size=rows,
      max_length=data_cfg.eval_max_length, **langs))
  return Inputs(train_iter=train_iter, eval_batches=eval_batches)
