"""Translate a TFDS split or a source/reference file pair and score it (inference/bleu.py)."""
from collections.abc import Callable

from etils import epath

from inference import bleu
from inference import restore
from inference import translate


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
