"""One joint English+French SentencePiece vocabulary, trained once per workdir.

Fixed ids (T5 convention): pad = 0, eos = 1, unk = 2; there is no bos: the decoder
starts from the pad id. Byte fallback means no character is ever unknown: anything
outside the learned pieces is spelled as UTF-8 byte pieces `<0xNN>` and decodes back.
Normalisation is 'identity' (text kept as it is, so emoji and control characters
survive); the only change a round trip makes is that runs of spaces collapse to one
and leading/trailing spaces are dropped.
"""
from collections.abc import Iterable, Sequence
import hashlib
import io
import json
import os

from absl import logging
from etils import epath
import numpy as np
import sentencepiece as spm

from storage import files
from storage import layout

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


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
  # A crash mid-write must not leave half a model that later runs would load.
  files.atomic_write(model_path, proto)
  logging.info("Trained a %d-piece %s SentencePiece model: %s", vocab_size,
               model_type, model_path)
  return Tokenizer(proto)


def train_or_load(workdir: str | os.PathLike, sentences_fn, **train_kwargs) -> Tokenizer:
  """Loads `workdir/spm.model`, training it first from `sentences_fn()` if missing."""
  path = epath.Path(workdir) / layout.TOKENIZER_FILE
  if path.exists():
    logging.info("Reusing SentencePiece model %s", path)
    return Tokenizer.load(path)
  return train(sentences_fn(), path, **train_kwargs)


def record(model_proto: bytes) -> dict:
  """What binds checkpoints to a tokenizer: its sha256 and vocabulary size."""
  return {"sha256": hashlib.sha256(model_proto).hexdigest(),
          "vocab_size": Tokenizer(model_proto).vocab_size}


def bind_to_run(workdir, model_proto: bytes) -> None:
  """Binds the run to this tokenizer in WORKDIR/run.json (kept if already there)."""
  run = layout.read_run_record(workdir)
  if "tokenizer" not in run:
    run["tokenizer"] = record(model_proto)
    files.atomic_write(epath.Path(workdir) / layout.RUN_FILE, json.dumps(run, indent=2))


def load_from_workdir(workdir) -> Tokenizer:
  """WORKDIR/spm.model, checked against the tokenizer the run recorded (run.json).

  A missing, unreadable or different spm.model is an error: the checkpoints' token
  ids mean nothing with another vocabulary.
  """
  path = epath.Path(workdir) / layout.TOKENIZER_FILE
  expected = layout.read_run_record(workdir).get("tokenizer")
  bound = (f" The run in {workdir} was trained with the tokenizer of sha256"
           f" {expected['sha256']} ({expected['vocab_size']} pieces): put that"
           " spm.model back" if expected else f" Put the run's spm.model back in {workdir}")
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing.{bound}, or train a new run in a new"
                            " workdir.")
  proto = path.read_bytes()
  try:
    tokenizer = Tokenizer(proto)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path} is not a readable SentencePiece model ({e}).{bound}."
                     ) from None
  if expected:
    found = record(proto)
    if found != expected:
      raise ValueError(f"{path} is not the tokenizer the checkpoints were trained"
                       f" with: it has sha256 {found['sha256']} and"
                       f" {found['vocab_size']} pieces.{bound} (or use a new workdir).")
  return tokenizer
