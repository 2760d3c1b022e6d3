"""gs:// workdirs: the workdir's files go through etils.epath, never os.path.

No bucket is reachable here, so an in-memory fsspec filesystem stands in for GCS:
etils.epath opens gs:// paths with fsspec's 'gcs' implementation (gcsfs, from the
`gcs` extra), which the fixture replaces. Like gcsfs, it cannot append, and a
written object appears whole when its file is closed.
"""
import configparser
import gzip
import io
import json
import types

from etils import epath
from etils.epath import backend
from fsspec.implementations import memory
from fsspec.registry import known_implementations
import pytest

from data import datasets
from data import multi30k
from data import tokenizer as tokenizer_lib
from recipes import prepare
from inference import text_io
from storage import files
from storage import integrity
from storage import layout
from tests.conftest import REPO
from training import lock
from training import metrics as metrics_lib
from training import run_record

WORKDIR = "gs://bucket/runs/en-fr"


class FakeGcs(memory.MemoryFileSystem):
  """A bucket in memory, answering to gs:// (its own store: no leak between tests)."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode or "w" in mode:  # gcsfs: "ab" starts a new object as "wb" does.
      return _Upload(self, self._strip_protocol(path))
    return super()._open(path, mode, **kwargs)


class _Upload(io.BytesIO):
  """An object being written: it replaces the stored one when closed, not before."""

  def __init__(self, fs, path):
    super().__init__()
    self._fs, self._path = fs, path

  def close(self):
    if not self.closed:
      self._fs.store[self._path] = memory.MemoryFile(self._fs, self._path,
                                                     self.getvalue())
    super().close()


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """Routes gs:// to a fresh FakeGcs; runs the test in an empty working directory."""
  monkeypatch.setattr(FakeGcs, "store", {})
  monkeypatch.setattr(FakeGcs, "pseudo_dirs", [""])
  monkeypatch.setitem(known_implementations, "gcs",
                      {"class": f"{__name__}.{FakeGcs.__name__}"})
  # epath caches one filesystem per protocol.
  clear_cache = backend.fsspec_backend._get_filesystem.cache_clear  # pylint: disable=protected-access
  clear_cache()
  monkeypatch.chdir(tmp_path)
  yield FakeGcs.store
  clear_cache()
  # A gs:// URL taken for a local path would have made ./gs:/bucket/...
  assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_layout_keeps_urls_and_writes_through_epath(bucket):
  assert str(layout.checkpoint_dir(WORKDIR)) == f"{WORKDIR}/checkpoints"
  assert str(layout.averaged_dir(WORKDIR, 5)) == f"{WORKDIR}/averaged_last5"
  files.atomic_write(epath.Path(WORKDIR) / "notes.txt", "whole")
  assert bucket[f"{WORKDIR}/notes.txt"].getvalue() == b"whole"
  assert layout.read_run_record(WORKDIR) == {}
  assert layout.checkpoint_steps(layout.checkpoint_dir(WORKDIR)) == []


def test_the_lock_works_on_a_bucket(bucket):
  path = lock.acquire(WORKDIR)
  assert str(path) == f"{WORKDIR}/{lock.LOCK_FILE}"
  assert json.loads(path.read_text())["pid"] > 0
  with pytest.raises(lock.WorkdirLockedError, match="is being trained by PID"):
    lock.acquire(WORKDIR)
  lock.release(path)
  assert f"{WORKDIR}/{lock.LOCK_FILE}" not in bucket


def test_prepare_and_run_files_on_a_bucket(prepared, bucket):
  config, tokenizer_dir, _, _ = prepared
  (epath.Path(WORKDIR) / layout.TOKENIZER_FILE).write_bytes(
      (tokenizer_dir / layout.TOKENIZER_FILE).read_bytes())
  _, tokenizer = prepare.prepare(config, WORKDIR)
  run_record.write_run_info(config, epath.Path(WORKDIR), tokenizer)
  for name in (layout.CONFIG_FILE, layout.RUN_FILE, "run_info.json"):
    assert f"{WORKDIR}/{name}" in bucket
  assert layout.read_config(WORKDIR).model.emb_dim == config.model.emb_dim
  assert tokenizer_lib.load_from_workdir(WORKDIR).vocab_size == tokenizer.vocab_size
  run_record.check_tokenizer(epath.Path(WORKDIR), tokenizer)


def test_a_manual_dir_on_a_bucket_is_a_directory(bucket, monkeypatch):
  """config.data.manual_dir is checked through epath (os.path.isdir says no to URLs)."""
  built = []
  monkeypatch.setattr(datasets.tfds, "data_source",
                      lambda name, **kwargs: built.append(name) or [])
  manual_dir = "gs://bucket/multi30k"
  (epath.Path(manual_dir) / "train.en.gz").write_bytes(b"")
  data_cfg = types.SimpleNamespace(dataset="multi30k", manual_dir=manual_dir,
                                   tfds_data_dir="")
  datasets.load_sources(data_cfg, ["train"])
  assert built == [datasets.DATASETS["multi30k"]]
  data_cfg.manual_dir = "gs://bucket/elsewhere"
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    datasets.load_sources(data_cfg, ["train"])


def test_raw_files_on_a_bucket_are_read_gzipped_or_not(bucket):
  """The builder reads manual_dir's raw files through epath, as it finds them."""
  manual_dir = epath.Path("gs://bucket/multi30k")
  (manual_dir / "train.en.gz").write_bytes(gzip.compress("a b\nc\u2028d\r\n".encode()))
  (manual_dir / "train.fr").write_text("x\ny\n")
  assert multi30k.read_lines(str(manual_dir / "train.en.gz")) == ["a b", "c\u2028d"]
  assert multi30k.read_lines(str(manual_dir / "train.fr")) == ["x", "y"]
  (manual_dir / "val.en").write_bytes(b"ok\nbad \xff\n")
  with pytest.raises(ValueError, match=r"val.en:2: not UTF-8 .* Re-encode"):
    multi30k.read_lines(str(manual_dir / "val.en"))


def _steps(workdir):
  return [row["step"] for row in metrics_lib.read_metrics(workdir)]


def test_metrics_on_a_bucket_survive_resume_and_kill(bucket, no_event_files):
  """A bucket cannot append: a resumed run must not replace the earlier lines, and a
  killed one (never closing its writer) must keep what it uploaded."""
  first = metrics_lib.MetricWriter(WORKDIR)
  first.write(1, "train", {"loss": 2.0})
  first.close()
  assert _steps(WORKDIR) == [1]
  resumed = metrics_lib.MetricWriter(WORKDIR)
  resumed.write(2, "train", {"loss": 1.5})
  resumed.close()
  assert _steps(WORKDIR) == [1, 2]
  killed = metrics_lib.MetricWriter(WORKDIR, upload_every_secs=0)
  killed.write(3, "validation", {"loss": 1.0})
  assert _steps(WORKDIR) == [1, 2, 3]  # Uploaded at once, before any close.


def test_the_gcs_extra_installs_what_gs_paths_need():
  """etils.epath opens gs:// with gcsfs; orbax (bucket checks) and tensorboardX
  (event files) import google-cloud-storage."""
  setup = configparser.ConfigParser()
  setup.read(REPO / "setup.cfg")
  extra = setup["options.extras_require"]["gcs"].split()
  assert any(r.startswith(("gcsfs", "etils[epath-gcs]")) for r in extra), extra
  assert any(r.startswith("google-cloud-storage") for r in extra), extra



def test_manifests_and_outputs_on_a_bucket(bucket):
  directory = epath.Path(WORKDIR) / "averaged_last2" / "4"
  (directory / "params").mkdir(parents=True)
  (directory / "params" / "weights").write_bytes(b"\x01" * 64)
  (directory / "_CHECKPOINT_METADATA").write_text("{}")
  integrity.write_manifest(directory)
  assert set(integrity.read_manifest(directory)) == {"_CHECKPOINT_METADATA",
                                                     "params/weights"}
  assert integrity.verify(directory, under="params")
  (directory / "params" / "weights").write_bytes(b"\x02" * 64)  # Same size.
  with pytest.raises(integrity.IntegrityError, match="params/weights: sha256"):
    integrity.verify(directory)
  output = f"{WORKDIR}/out.fr"
  text_io.check_output_path(output)
  with text_io.open_output(output) as out:
    out.write(b"un chien\n")
  assert epath.Path(output).read_bytes() == b"un chien\n"
