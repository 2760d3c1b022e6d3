"""One joint English+French SentencePiece vocabulary, trained once per workdir.

Fixed ids (T5 convention): pad = 0, eos = 1, unk = 2; there is no bos: the decoder
starts from the pad id. Byte fallback means no character is ever unknown: anything
outside the learned pieces is spelled as UTF-8 byte pieces `<0xNN>` and decodes back.
Normalisation is 'identity' (text kept as it is, so emoji and control characters
survive); the only change a round trip makes is that runs of spaces collapse to one
and leading/trailing spaces are dropped.
"""
from collections.abc import Iterable, Sequence
import io
import os

from absl import logging
from etils import epath
import numpy as np
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MODEL_FILENAME = "spm.model"


class Tokenizer:
  """A SentencePiece model: text <-> ids, picklable for grain worker processes."""

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (
        PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(
          f"SentencePiece model must have pad={PAD_ID}, eos={EOS_ID}, unk={UNK_ID};"
          f" it has {self._sp.pad_id()}, {self._sp.eos_id()}, {self._sp.unk_id()}.")

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    return cls(epath.Path(path).read_bytes())

  def __reduce__(self):
    return Tokenizer, (self._proto,)

  @property
  def proto(self) -> bytes:
    """The serialized model, as in spm.model."""
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Ids of `text` without eos."""
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`, read up to the first eos; pad ids are ignored."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    return self._sp.decode([i for i in ids if i != PAD_ID])

  def byte_piece_mask(self) -> np.ndarray:
    """[vocab] bool: which ids are byte-fallback pieces `<0xNN>`."""
    return np.array([self._sp.is_byte(i) for i in range(self.vocab_size)])


def train(sentences: Iterable[str], model_path: str | os.PathLike, *,
          vocab_size: int, model_type: str = "unigram",
          max_sentences: int = 2_000_000, seed: int = 0) -> Tokenizer:
  """Trains a model on `sentences` and writes it to `model_path` (local or gs://)."""
  spm.set_random_generator_seed(seed)  # Sentence sampling is then reproducible.
  model = io.BytesIO()  # In memory: no temporary path recorded in the model.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=1.0,  # Every seen character gets a piece; unseen ones bytes.
      byte_fallback=True,
      normalization_rule_name="identity",
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
  )
  proto = model.getvalue()
  model_path = epath.Path(model_path)
  model_path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in str(model_path):  # Objects in a bucket are written whole.
    model_path.write_bytes(proto)
  else:  # A crash mid-write must not leave half a model that later runs would load.
    tmp = model_path.with_name(f".{model_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(proto)
    os.replace(tmp, model_path)
  logging.info("Trained a %d-piece %s SentencePiece model: %s", vocab_size,
               model_type, model_path)
  return Tokenizer(proto)


def train_or_load(workdir: str | os.PathLike, sentences_fn, **train_kwargs) -> Tokenizer:
  """Loads `workdir/spm.model`, training it first from `sentences_fn()` if missing."""
  path = epath.Path(workdir) / MODEL_FILENAME
  if path.exists():
    logging.info("Reusing SentencePiece model %s", path)
    return Tokenizer.load(path)
  return train(sentences_fn(), path, **train_kwargs)
