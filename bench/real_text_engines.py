"""The two engines of bench/real_text.py behind one interface: lines in, lines out.

`Ours` is `inference.Translator`; `CTranslate2` is a `ctranslate2.Translator` over the
same weights exported by `inference.export`, tokenized into pieces by the run's
SentencePiece model (its pieces are the exported vocabulary, in id order). Each
engine translates a whole file with its own token-budget batching (`translate_file`)
or a list of lines as one batch (`translate_batch`); both return the texts and the
number of target tokens (EOS left out), and their times include tokenizing and
detokenizing. This module imports neither JAX nor our model code at load, so a
CTranslate2 cold start (bench/real_text_cold.py) imports only what its users would.
"""
from collections.abc import Sequence
import dataclasses
import gzip
import math
import os

# CTranslate2 reads it when it loads: without MKL its int8 GEMM saturates on AVX2
# processors without VNNI (tests/conftest.py has the measurement).
os.environ.setdefault("CT2_USE_MKL", "1")

Output = tuple[list[str], int]  # (one text per line, target tokens without EOS)


def read_lines(path: str) -> list[str]:
  """The lines of a text file, read as gzip if its name ends in .gz."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


@dataclasses.dataclass
class Ours:
  """Our Translator; `precision` is float32 or a `--quantize` mode (int8)."""
  translator: object  # inference.Translator
  precision: str

  @property
  def name(self) -> str:
    return f"ours/{self.precision}"

  def translate_file(self, lines: Sequence[str]) -> Output:
    translations = self.translator.translate(lines)
    return [t.text for t in translations], sum(len(t.ids) for t in translations)

  def translate_batch(self, lines: Sequence[str]) -> Output:
    """The lines as one padded batch: [len(lines), bucket of the longest]."""
    from inference import bucketing  # pylint: disable=import-outside-toplevel
    sources = self.translator.tokenize(lines)
    length = bucketing.bucket(max(len(s.ids) for s in sources))
    translations = self.translator.translate_batch(
        sources, length, len(sources), self.translator.settings, 1)
    return [t.text for t in translations], sum(len(t.ids) for t in translations)


@dataclasses.dataclass
class CTranslate2:
  """A ctranslate2.Translator; `threads` is its intra_threads (inter_threads 1).

  `options` are `translate_batch`'s search options (`inference.export.
  translate_options` and a length penalty) but max_decoding_length, which follows
  our limit a * source_len + b (EOS included) for the longest line of each call.
  """
  model_dir: str
  precision: str  # float32 or int8, the exported weight type.
  threads: int
  spm_path: str
  options: dict
  max_len_a: float
  max_len_b: float
  max_len: int  # The model's position limit.
  batch_tokens: int  # translate_file's max_batch_size, batch_type="tokens".

  def __post_init__(self):
    import ctranslate2  # pylint: disable=import-outside-toplevel
    import sentencepiece  # pylint: disable=import-outside-toplevel
    self._translator = ctranslate2.Translator(
        self.model_dir, device="cpu", compute_type="default",
        intra_threads=self.threads, inter_threads=1)
    self._sp = sentencepiece.SentencePieceProcessor(model_file=self.spm_path)

  @property
  def name(self) -> str:
    return f"ctranslate2/{self.precision}/threads{self.threads}"

  def _run(self, lines: Sequence[str], **batching) -> Output:
    pieces = self._sp.encode(list(lines), out_type=str)
    longest = max(len(p) for p in pieces) + 1  # EOS, which CTranslate2 appends.
    limit = min(self.max_len, math.ceil(self.max_len_a * longest + self.max_len_b))
    results = self._translator.translate_batch(
        pieces, **{**self.options, "max_decoding_length": limit}, **batching)
    hyps = [r.hypotheses[0] for r in results]
    return self._sp.decode(hyps), sum(len(h) for h in hyps)

  def translate_file(self, lines: Sequence[str]) -> Output:
    return self._run(lines, max_batch_size=self.batch_tokens, batch_type="tokens")

  def translate_batch(self, lines: Sequence[str]) -> Output:
    return self._run(lines)

  def spec(self) -> dict:
    """What rebuilds this engine in another process (bench/real_text_cold.py)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
