"""metrics.jsonl after a run killed in the middle of a line, then resumed."""
import json

from absl import logging

from training import metrics as metrics_lib


def test_a_line_cut_by_a_kill_is_skipped_with_a_warning_and_the_resume_is_kept(
    tmp_path, monkeypatch, no_event_files):  # pylint: disable=unused-argument
  path = tmp_path / metrics_lib.METRICS_FILE
  cut = json.dumps({"step": 2, "split": "train", "loss": 1.5})[:20]
  path.write_text(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n" + cut)
  resumed = metrics_lib.MetricWriter(str(tmp_path))
  resumed.write(2, "train", {"loss": 1.4})
  resumed.write(2, "validation", {"loss": 1.6, "bleu": 30.0})
  resumed.close()
  warnings = []
  monkeypatch.setattr(logging, "warning",
                      lambda msg, *args: warnings.append(msg % args))
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert [(r["step"], r["split"]) for r in rows] == [
      (1, "train"), (2, "train"), (2, "validation")]
  assert len(warnings) == 1 and f"{path}:2" in warnings[0], warnings
  assert metrics_lib.plot_curves(str(tmp_path)).exists()
