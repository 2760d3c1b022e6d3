"""Translation quality in the two conventions users report.

- Cased, detokenized sacreBLEU (with its signature) and chrF: comparable across papers.
- The Multi30k shared-task convention (`bleu_lc_tok`): lowercase, Moses punctuation
  normalisation and Moses tokenizer for French, then BLEU over those tokens
  (sacrebleu with tokenize='none'), which reproduces the official tokenized references.
"""
from collections.abc import Sequence

import sacrebleu
import sacremoses


def shared_task_tokens(lines: Sequence[str], lang: str = "fr") -> list[str]:
  """lowercase | normalize-punctuation.perl -l fr | tokenizer.perl -l fr, in Python."""
  normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
  tokenizer = sacremoses.MosesTokenizer(lang=lang)
  return [tokenizer.tokenize(normalizer.normalize(line.lower()), return_str=True,
                             escape=False) for line in lines]


def score(hypotheses: Sequence[str], references: Sequence[str], lang: str = "fr"
          ) -> dict:
  """BLEU (both conventions) and chrF of `hypotheses` against one reference each."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references:"
                     " the files must be line-aligned.")
  bleu = sacrebleu.BLEU()
  cased = bleu.corpus_score(list(hypotheses), [list(references)])
  chrf = sacrebleu.CHRF()
  chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
  lc_tok = sacrebleu.BLEU(tokenize="none", force=True).corpus_score(
      shared_task_tokens(hypotheses, lang), [shared_task_tokens(references, lang)])
  return {
      "bleu_lc_tok": round(lc_tok.score, 2),
      "sacrebleu": round(cased.score, 2),
      "sacrebleu_signature": str(bleu.get_signature()),
      "chrf": round(chrf_score.score, 2),
      "chrf_signature": str(chrf.get_signature()),
      "sentences": len(hypotheses),
  }
