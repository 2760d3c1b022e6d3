"""Translate a TFDS split or a source/reference file pair and score it (inference/bleu.py)."""
from collections.abc import Callable, Sequence
import json

from absl import logging
from etils import epath
import jax

from inference import bleu
from inference import restore
from inference import translate
from training import checkpoints


def _pairs_from_split(workdir: str, split: str) -> tuple[list[str], list[str]]:
  from data import datasets  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from data import pipeline  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  data_cfg = restore.load_config(workdir).data
  source = datasets.load_sources(data_cfg, [split])[split]
  examples = [source[i] for i in range(len(source))]
  return ([pipeline.decode_text(ex[data_cfg.source_lang]) for ex in examples],
          [pipeline.decode_text(ex[data_cfg.target_lang]) for ex in examples])


def evaluate(run: Callable, workdir: str, *, step: int, split: str | None,
             source: str | None, reference: str | None, output: str) -> dict:
  """Scores `run(texts, name, progress) -> lines`; writes the hypotheses to a file.

  Either `split` (read through TFDS with the run's data config) or `source` and
  `reference` files. The hypotheses go to `output`, or by default to
  WORKDIR/hypotheses/<split or source name>.step<step>.txt.
  """
  if split:
    sources, references = _pairs_from_split(workdir, split)
    name = split
  elif source and source != "-" and reference:
    sources = translate.read_lines(epath.Path(source).read_bytes(), source)
    references = translate.read_lines(epath.Path(reference).read_bytes(), reference)
    name = epath.Path(source).name
  else:
    raise ValueError("--mode=evaluate needs --split, or --input and --reference files.")
  if len(sources) != len(references):
    raise ValueError(f"{name}: {len(sources)} source lines but {len(references)}"
                     f" reference lines ({reference}); the files must be line-aligned.")
  hypotheses = run(sources, name, True)
  path = (epath.Path(workdir) / "hypotheses" / f"{name}.step{step}.txt"
          if output == "-" else epath.Path(output))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(h + "\n" for h in hypotheses))
  return {"data": name, "step": step, "hypotheses": str(path),
          **bleu.score(hypotheses, references)}


def evaluate_run(workdir: str, mesh, *, splits: Sequence[str], average_last: int,
                 beam_size: int, alpha: float) -> list[dict]:
  """The end of a recipe: average the last checkpoints, then score each split.

  Averages the last `average_last` checkpoints (fewer if the run has fewer; 1 scores
  the last checkpoint as it is) and writes the results to WORKDIR/results.json.
  """
  available = len(restore.checkpoint_steps(str(checkpoints.checkpoint_dir(workdir))))
  count = min(average_last, available)
  if count < average_last:
    logging.warning("Averaging %d checkpoints, not %d: %s has only %d.", count,
                    average_last, workdir, available)
  checkpoint_dir = (str(restore.average_checkpoints(workdir, mesh, count))
                    if count > 1 else None)
  run, step = translate.make_translator(workdir, mesh, checkpoint_dir=checkpoint_dir,
                                        beam_size=beam_size, alpha=alpha)
  results = []
  for split in splits:
    output = epath.Path(workdir) / "hypotheses" / f"{split}.step{step}.avg{count}.txt"
    results.append({**evaluate(run, workdir, step=step, split=split, source=None,
                               reference=None, output=str(output)),
                    "averaged_checkpoints": count, "beam_size": beam_size,
                    "alpha": alpha})
  if jax.process_index() == 0:
    (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=1))
  return results
