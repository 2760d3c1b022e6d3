"""Limits on decode settings that every entry point enforces with the same words.

Training (config.decode, training/validate.py), the inference flags
(cli/inference_flags.py) and the server can all import this module: it sits below
both phases and imports nothing.
"""
import math

MAX_BEAM_SIZE = 16  # Beam widths above this cost memory for no gain in BLEU here.


def decode_problems(beam_size, alpha, max_len_a, max_len_b) -> list[tuple[str, str]]:
  """(field, allowed range) of each decode setting that cannot decode; [] if none.

  The output limit is a * source_len + b tokens: both >= 0 and finite, not both 0
  (that limit would be no token at all).
  """
  problems = []

  def number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))

  if not (isinstance(beam_size, int) and 1 <= beam_size <= MAX_BEAM_SIZE):
    problems.append(("beam_size", f"an integer in [1, {MAX_BEAM_SIZE}] (1: greedy)"))
  if not (number(alpha) and alpha >= 0):
    problems.append(("alpha", "a finite number >= 0 (0: no length penalty)"))
  for field, value in (("max_len_a", max_len_a), ("max_len_b", max_len_b)):
    if not (number(value) and value >= 0):
      problems.append((field, "a finite number >= 0"))
  if number(max_len_a) and number(max_len_b) and max_len_a == max_len_b == 0:
    problems.append(("max_len_b", "> 0 when max_len_a is 0 (the output limit is"
                     " max_len_a * source_len + max_len_b tokens)"))
  return problems
