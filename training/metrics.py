"""Where metrics go: TensorBoard events (tensorboardX), metrics.jsonl and curves.png."""
import json
import os
import time

from absl import logging
from etils import epath
import jax
import matplotlib
matplotlib.use("Agg")  # Headless: files only.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top,wrong-import-position

from storage import files
from storage import layout  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class _LocalLines:
  """A local file appended to and flushed line by line.

  A run killed in the middle of a line leaves it without its newline: the next run
  starts on a new line, so only the cut line is lost (`read_metrics` skips it).
  """

  def __init__(self, path: epath.Path):
    self._file = path.open("a")
    if self._file.tell():  # A resumed run: look at the last byte only.
      with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          self._file.write("\n")

  def write(self, line: str):
    self._file.write(line)
    self._file.flush()

  def close(self):
    self._file.close()


class _RemoteLines:
  """An object-store file (gs://), which cannot be appended to: the lines are kept in
  memory, starting from the object's content (a resumed run), and the whole object
  is rewritten at most every `upload_every_secs` and at close. A killed run loses at
  most the lines of the last interval.
  """

  def __init__(self, path: epath.Path, upload_every_secs: float):
    self._path, self._every = path, upload_every_secs
    text = path.read_text() if path.exists() else ""
    self._lines = [text if not text or text.endswith("\n") else text + "\n"]
    self._uploaded = time.monotonic()
    self._pending = False

  def write(self, line: str):
    self._lines.append(line)
    self._pending = True
    if time.monotonic() - self._uploaded >= self._every:
      self._upload()

  def _upload(self):
    files.atomic_write(self._path, "".join(self._lines))
    self._uploaded, self._pending = time.monotonic(), False

  def close(self):
    if self._pending:
      self._upload()


class MetricWriter:
  """Writes scalars from process 0 only, so a multi-host run logs each step once.

  metrics.jsonl is appended to locally; on gs:// it is rewritten whole every
  `upload_every_secs` (buckets cannot append).
  """

  def __init__(self, workdir: str, upload_every_secs: float = 60.0):
    self._workdir = epath.Path(workdir)
    self._active = jax.process_index() == 0
    if self._active:
      self._tb = SummaryWriter(str(self._workdir / "tensorboard"))
      path = self._workdir / METRICS_FILE
      self._jsonl = (_RemoteLines(path, upload_every_secs) if files.is_remote(path)
                     else _LocalLines(path))

  def write(self, step: int, split: str, scalars: dict[str, float]):
    """One line `{"step": s, "split": "train", "loss": ...}` and one event per scalar."""
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
    for name, value in scalars.items():
      self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def close(self):
    if self._active:
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl; a line that is not JSON (one cut by a kill)
  is skipped with a warning naming it."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().split("\n"), start=1):
    if not line:
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      logging.warning("%s:%d: skipped, not a JSON line (%s); a run killed while"
                      " writing it leaves such a line.", path, number, e)
  return rows


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
