"""Translate and score: a TFDS split or a file pair, validation BLEU during training,
and the end of a recipe (average the last checkpoints, score them)."""
from collections.abc import Sequence
import dataclasses
import json

from absl import logging
from etils import epath
from flax import nnx
import jax

from data import datasets
from data import tokenizer as tokenizer_lib
from inference import bleu
from inference import decoder as decoder_lib
from inference import restore
from inference import text_io
from inference.translator import Translator
from parallel.sharding import Partitioner
from storage import files
from storage import layout


def read_split(workdir: str, split: str) -> tuple[list[str], list[str]]:
  """(sources, references) of a TFDS split, read with the run's data config."""
  data_cfg = layout.read_config(workdir).data
  source = datasets.load_sources(data_cfg, [split])[split]
  return datasets.text_pairs(source, data_cfg.source_lang, data_cfg.target_lang)


def read_file_pair(source: str, reference: str) -> tuple[list[str], list[str]]:
  """(sources, references) from two line-aligned files."""
  sources = text_io.read_lines(epath.Path(source).read_bytes(), source)
  references = text_io.read_lines(epath.Path(reference).read_bytes(), reference)
  if len(sources) != len(references):
    raise ValueError(f"{source} has {len(sources)} lines but {reference} has"
                     f" {len(references)}; the files must be line-aligned.")
  return sources, references


def evaluate(translator: Translator, name: str, sources: Sequence[str],
             references: Sequence[str], output: epath.Path, nbest: int = 1) -> dict:
  """Translates `sources`, scores the best hypotheses, writes the output lines."""
  translations = translator.translate(sources, name=name, progress=True)
  output.parent.mkdir(parents=True, exist_ok=True)
  files.atomic_write(output, "".join(t.line(nbest) + "\n" for t in translations))
  return {"data": name, "step": translator.step, "hypotheses": str(output),
          **bleu.score([t.text for t in translations], references)}


@dataclasses.dataclass
class BleuEvaluator:
  """Validation BLEU of the current parameters, for `training.trainer.Evaluator`.

  Translates `sources` with the training partitioner (its mesh and rules) and scores
  against `references`; the decoder is compiled once and reused at every pass.
  """
  sources: Sequence[str]
  references: Sequence[str]
  tokenizer: tokenizer_lib.Tokenizer
  decoder: decoder_lib.Decoder
  batch_tokens: int

  def __call__(self, graphdef: nnx.GraphDef, params: nnx.State) -> dict[str, float]:
    translator = Translator(graphdef, params, self.tokenizer, self.decoder,
                            batch_tokens=self.batch_tokens)
    translations = translator.translate(self.sources)
    scores = bleu.score([t.text for t in translations], self.references)
    return {"bleu": scores["bleu_lc_tok"], "sacrebleu": scores["sacrebleu"],
            "chrf": scores["chrf"]}


def evaluate_run(workdir: str, partitioner: Partitioner, *, splits: Sequence[str],
                 average_last: int, settings: decoder_lib.DecodeSettings) -> list[dict]:
  """The end of a recipe: average the last checkpoints, then score each split.

  Averages the last `average_last` checkpoints (fewer if the run has fewer; 1 scores
  the last checkpoint as it is) and writes the results to WORKDIR/results.json.
  """
  available = len(layout.checkpoint_steps(layout.checkpoint_dir(workdir)))
  count = min(average_last, available)
  if count < average_last:
    logging.warning("Averaging %d checkpoints, not %d: %s has only %d.", count,
                    average_last, workdir, available)
  checkpoint_dir = (str(restore.average_checkpoints(workdir, partitioner, count))
                    if count > 1 else None)
  translator = Translator.from_workdir(workdir, partitioner=partitioner,
                                       checkpoint_dir=checkpoint_dir, settings=settings)
  results = []
  for split in splits:
    output = (epath.Path(workdir) / "hypotheses"
              / f"{split}.step{translator.step}.avg{count}.txt")
    results.append({**evaluate(translator, split, *read_split(workdir, split), output),
                    "averaged_checkpoints": count, **dataclasses.asdict(settings)})
  if jax.process_index() == 0:
    files.atomic_write(epath.Path(workdir) / "results.json",
                       json.dumps(results, indent=1, allow_nan=False))
  return results
