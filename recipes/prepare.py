"""Data preparation for a workdir: build the TFDS dataset, train or reuse the tokenizer.

What a workdir already holds decides what is built: a job's first stage, so it sits
with the recipes, above the data/ and storage/ modules it uses.
"""
from collections.abc import Callable, Sequence

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from data import datasets
from data import pipeline
from data import tokenizer as tokenizer_lib
from storage import layout

# Above this many training pairs, corpus statistics are estimated from a sample.
_STATS_SAMPLE = 200_000


def _sample_indices(n: int, k: int, seed: int) -> np.ndarray:
  """All of range(n) if n <= k, else k of them, drawn reproducibly, in order."""
  if n <= k:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def prepare(config, workdir: str, splits: Sequence[str] = ("train", "validation")):
  """Returns ({split: data source}, tokenizer) for `config`, preparing what is missing.

  The tokenizer is trained on the training split only (both languages) and stored as
  `workdir/spm.model`; a second run, and inference, reuse that file. Once the run has
  a tokenizer (run.json records it) or checkpoints, it is never trained again: a
  missing or different spm.model is an error (`tokenizer_lib.load_from_workdir`).
  """
  data_cfg = config.data
  sources = datasets.load_sources(data_cfg, splits)
  train = sources["train"] if "train" in sources else datasets.load_sources(
      data_cfg, ["train"])["train"]

  def sentences():
    langs = (data_cfg.source_lang, data_cfg.target_lang)
    for i in _sample_indices(len(train), data_cfg.spm_max_sentences // 2, config.seed):
      example = train[int(i)]
      for lang in langs:
        yield datasets.decode_text(example[lang])

  bound = (layout.read_run_record(workdir).get("tokenizer")
           or layout.checkpoint_steps(layout.checkpoint_dir(workdir)))
  if bound or (epath.Path(workdir) / layout.TOKENIZER_FILE).exists():
    tokenizer = tokenizer_lib.load_from_workdir(workdir)
  else:
    tokenizer = tokenizer_lib.train(
        sentences(), epath.Path(workdir) / layout.TOKENIZER_FILE,
        vocab_size=data_cfg.vocab_size, model_type=data_cfg.spm_model_type,
        max_sentences=data_cfg.spm_max_sentences, seed=config.seed)
  if jax.process_index() == 0:
    tokenizer_lib.bind_to_run(workdir, tokenizer.proto)
  return sources, tokenizer


def prepare_on_all_processes(
    config, workdir: str, train_transform: Callable[[Sequence], Sequence] | None = None
    ) -> tuple[dict, tokenizer_lib.Tokenizer]:
  """`prepare` on every process of a run: process 0 first, then the others.

  Process 0 alone builds the TFDS dataset and trains the tokenizer, so processes
  sharing a file system never write them at once; the others then only read them.
  `train_transform`, if given, replaces the training source by what it returns
  (distillation: the teacher's translations as targets), before the statistics.
  Process 0 also logs the training split's statistics, including how many pairs
  training drops as empty or longer than `config.data.max_length`; if that leaves no
  pair, every process stops with an error (training would wait forever for a batch).
  """
  def prepared():
    sources, tokenizer = prepare(config, workdir)
    if train_transform is not None:
      sources = {**sources, "train": train_transform(sources["train"])}
    return sources, tokenizer

  kept = 0
  if jax.process_index() == 0:
    sources, tokenizer = prepared()
    stats = corpus_stats(sources["train"], tokenizer, config.data, seed=config.seed)
    logging.info("Training data: %s", stats)
    kept = stats["kept_pairs"]
  # Also the barrier: the others read the data only once process 0 has written it.
  if not int(multihost_utils.broadcast_one_to_all(np.int32(kept))):
    raise ValueError(
        "No training pair is left after dropping empty pairs and pairs longer than"
        f" config.data.max_length={config.data.max_length} tokens (in"
        f" {config.data.dataset}'s training split, tokenized). Raise data.max_length"
        " (and model.max_len), or check the data files.")
  if jax.process_index() != 0:
    sources, tokenizer = prepared()
  return sources, tokenizer


def corpus_stats(source, tokenizer, data_cfg, seed: int = 0) -> dict:
  """Token statistics of a split: lengths, pairs the training filter drops, byte pieces."""
  tokenize = pipeline.Tokenize(tokenizer, data_cfg.source_lang, data_cfg.target_lang)
  indices = _sample_indices(len(source), _STATS_SAMPLE, seed)
  examples = [tokenize.map(e) for e in datasets.read_examples(source, indices)]
  is_byte_piece = tokenizer.byte_piece_mask()
  stats = {"pairs": len(source), "sampled": len(indices)}
  for feature in pipeline.FEATURES:
    lengths = np.array([len(e[feature]) for e in examples])
    tokens = np.concatenate([e[feature] for e in examples])
    stats[feature] = {
        "mean_tokens": round(float(lengths.mean()), 2),
        "p99_tokens": int(np.percentile(lengths, 99)),
        "max_tokens": int(lengths.max()),
        "byte_piece_rate": round(float(is_byte_piece[tokens].mean()), 6),
    }
  stats["empty_pairs"] = sum(
      1 for e in examples if not all(len(e[f]) for f in pipeline.FEATURES))
  stats["too_long_pairs"] = sum(
      1 for e in examples
      if any(len(e[f]) > data_cfg.max_length for f in pipeline.FEATURES))
  stats["kept_pairs"] = sum(
      1 for e in examples
      if all(0 < len(e[f]) <= data_cfg.max_length for f in pipeline.FEATURES))
  if stats["empty_pairs"] or stats["too_long_pairs"]:
    logging.warning(
        "Training skips %d empty pairs and %d pairs longer than max_length=%d"
        " (of %d examined).", stats["empty_pairs"], stats["too_long_pairs"],
        data_cfg.max_length, len(indices))
  return stats
