"""Target prefixes: the tokens a translation must start with, per sentence.

A prefix arrives as text (tokenized like a source line, without EOS) or as token
ids (the exact tokens, e.g. of an earlier output, which a text tokenized anew may
split otherwise), and travels with its source to the decoder, which forces it
(docs/decoding.md).
"""
from collections.abc import Sequence
import dataclasses

from inference import text_io
from inference.bucketing import Source


@dataclasses.dataclass
class PrefixedSource(Source):
  """A source with the target tokens its translation must start with ([]: none)."""
  prefix: list[int] = dataclasses.field(default_factory=list)


def _prefix_ids(prefix, tokenizer) -> list[int]:
  """A target prefix's ids: a string tokenized (no EOS), or ids as given."""
  if isinstance(prefix, str):
    return tokenizer.encode(text_io.clean(prefix)) if text_io.clean(prefix) else []
  return [int(i) for i in prefix]


def with_prefixes(sources: Sequence[Source], prefixes: Sequence, tokenizer
                  ) -> list[PrefixedSource]:
  """`sources` with their target prefixes: each a string, a list of token ids (the
  exact tokens, e.g. of an earlier output), or None (none)."""
  if isinstance(prefixes, (str, bytes)) or len(prefixes) != len(sources):
    raise ValueError(f"target_prefix must be a list of {len(sources)} prefixes (None"
                     " for none), one per text.")
  for i, p in enumerate(prefixes):
    if not (p is None or isinstance(p, str) or (
        isinstance(p, (list, tuple)) and all(
            isinstance(x, int) and 0 <= x < tokenizer.vocab_size for x in p))):
      raise ValueError(f"target_prefix[{i}] must be a string, a list of token ids"
                       f" below {tokenizer.vocab_size}, or None.")
  return [PrefixedSource(s.line, s.ids, s.truncated,
                         _prefix_ids(p, tokenizer) if p and s.ids else [])
          for s, p in zip(sources, prefixes)]
