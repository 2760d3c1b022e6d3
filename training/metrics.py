"""Where metrics go: TensorBoard events (tensorboardX), metrics.jsonl and curves.png."""
import json

from etils import epath
import jax
import matplotlib
matplotlib.use("Agg")  # Headless: files only.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricWriter:
  """Writes scalars from process 0 only, so a multi-host run logs each step once."""

  def __init__(self, workdir: str):
    self._workdir = epath.Path(workdir)
    self._active = jax.process_index() == 0
    if self._active:
      self._tb = SummaryWriter(str(self._workdir / "tensorboard"))
      self._jsonl = (self._workdir / METRICS_FILE).open("a")

  def write(self, step: int, split: str, scalars: dict[str, float]):
    """One line `{"step": s, "split": "train", "loss": ...}` and one event per scalar."""
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def close(self):
    if self._active:
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_curves(workdir: str) -> epath.Path:
  """Train and validation loss against step (and BLEU when logged) to curves.png."""
  rows = read_metrics(workdir)
  panels = [name for name in ("loss", "bleu") if any(name in r for r in rows)]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4),
                           squeeze=False)
  for ax, name in zip(axes[0], panels):
    for split in sorted({r["split"] for r in rows if name in r}):
      # A resumed run re-logs the steps after its checkpoint: the last line wins.
      points = {r["step"]: r[name] for r in rows if r["split"] == split and name in r}
      steps, values = zip(*sorted(points.items()))
      ax.plot(steps, values, label=split, marker="." if len(steps) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  path = epath.Path(workdir) / CURVES_FILE
  with path.open("wb") as f:
    fig.savefig(f, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
