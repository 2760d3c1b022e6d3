"""The Multi30k TFDS builder on the real files, its errors, WMT14, text pairs, no TF."""
import gzip
import hashlib
import pathlib
import shutil
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from data import datasets
from data import multi30k

REPO = pathlib.Path(__file__).resolve().parents[1]


def _first_line(path):
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return f.readline().rstrip("\n")


def test_split_sizes_and_first_pair(prepared, multi30k_dir):
  config, _, sources, _ = prepared
  sizes = datasets.split_sizes(config.data)
  assert sizes == {"train": 29000, "validation": 1014, "test_2016_flickr": 1000}
  for split, stem in (("train", "train"), ("validation", "val")):
    first = sources[split][0]
    assert first["en"].decode() == _first_line(multi30k_dir / f"{stem}.en.gz")
    assert first["fr"].decode() == _first_line(multi30k_dir / f"{stem}.fr.gz")


def test_text_pairs_decodes_the_first_limit_examples():
  source = [{"en": b"A dog.", "fr": b"Un chien."},
            {"en": "A cat.", "fr": "Un chat."},  # Text already decoded stays as it is.
            {"en": b"Bad \xff byte.", "fr": b"Caf\xc3\xa9."}]
  all_pairs = (["A dog.", "A cat.", "Bad \ufffd byte."],
               ["Un chien.", "Un chat.", "Café."])
  assert datasets.text_pairs(source, "en", "fr") == all_pairs
  assert datasets.text_pairs(source, "en", "fr", limit=-1) == all_pairs
  assert datasets.text_pairs(source, "en", "fr", limit=10) == all_pairs
  assert datasets.text_pairs(source, "en", "fr", limit=2) == (
      ["A dog.", "A cat."], ["Un chien.", "Un chat."])
  assert datasets.text_pairs(source, "fr", "en", limit=1) == (["Un chien."], ["A dog."])
  assert datasets.text_pairs(source, "en", "fr", limit=0) == ([], [])


def test_text_pairs_of_a_tfds_source(prepared, multi30k_dir):
  _, _, sources, _ = prepared
  en, fr = datasets.text_pairs(sources["validation"], "en", "fr", limit=3)
  assert len(en) == len(fr) == 3
  assert en[0] == _first_line(multi30k_dir / "val.en.gz")
  assert fr[0] == _first_line(multi30k_dir / "val.fr.gz")
  assert datasets.read_examples(sources["validation"], [2, 0]) == [
      sources["validation"][2], sources["validation"][0]]


def test_missing_split_error_says_how_to_fix(prepared):
  config, _, _, _ = prepared
  with pytest.raises(ValueError, match="test_2017_flickr.*manual"):
    datasets.load_sources(config.data, ["test_2017_flickr"])


def _write_gz(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def test_line_count_mismatch_names_both_files(tmp_path, smoke_config):
  manual = tmp_path / "raw"
  manual.mkdir()
  _write_gz(manual / "train.en.gz", [f"sentence {i}" for i in range(10)])
  _write_gz(manual / "train.fr.gz", [f"phrase {i}" for i in range(9)])
  config = smoke_config.copy_and_resolve_references()
  config.data.manual_dir = str(manual)
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(multi30k.LineCountMismatchError,
                     match=r"train\.en\.gz has 10 lines but .*train\.fr\.gz has 9"):
    datasets.load_sources(config.data, ["train"])


def test_unicode_separators_inside_a_line_keep_pairs_aligned(tmp_path):
  """Regression: `str.splitlines` also split on U+2028, U+0085, \x1c, a lone \r."""
  en = ["A man\u2028walks.", "A dog\x85runs.", "Two\x1ccats.", "A\rbird.", "End."]
  fr = ["Un homme marche.", "Un chien court.", "Deux chats.", "Un oiseau.", "Fin."]
  with gzip.open(tmp_path / "x.en.gz", "wb") as f:  # CRLF line ends on this side.
    f.write("".join(line + "\r\n" for line in en).encode("utf-8"))
  _write_gz(tmp_path / "x.fr.gz", fr)
  assert multi30k.read_parallel(str(tmp_path / "x.en.gz"),
                                str(tmp_path / "x.fr.gz")) == (en, fr)
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "no_final_newline.txt").write_bytes(b"a\n\nb")
  assert multi30k.read_lines(str(tmp_path / "empty.txt")) == []
  assert multi30k.read_lines(str(tmp_path / "no_final_newline.txt")) == ["a", "", "b"]


def test_manual_dir_must_exist(smoke_config, tmp_path):
  config = smoke_config.copy_and_resolve_references()
  config.data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="MULTI30K_DIR"):
    datasets.load_sources(config.data, ["train"])


def test_wmt14_path_with_mock_data(smoke_config, tmp_path):
  """wmt14_translate cannot be downloaded here: TFDS mock data stands in for it."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  config = smoke_config.copy_and_resolve_references()
  config.data.dataset = "wmt14"
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    sources = datasets.load_sources(config.data, ["train", "validation"])
    assert len(sources["train"]) == 12
    assert set(sources["train"][0]) == {"en", "fr"}
    texts = [datasets.decode_text(sources["train"][i][lang])
             for i in range(12) for lang in ("en", "fr")]
    tokenizer = tokenizer_lib.train(texts, tmp_path / "spm.model", vocab_size=300)
    batches = list(pipeline.eval_dataset(sources["validation"], tokenizer,
                                         batch_size=4, max_length=64,
                                         shard_index=0, shard_count=1))
  segments = sum(int(s.max()) for b in batches for s in b["inputs_segment_ids"])
  assert segments == 12


def test_importing_and_reading_never_imports_tensorflow(prepared):
  config, _, _, _ = prepared
  code = (
      "import sys, train, configs.default, data.pipeline, recipes.prepare\n"
      "from data import datasets\n"
      "from configs import smoke\n"
      "c = smoke.get_config().data\n"
      f"c.tfds_data_dir = {config.data.tfds_data_dir!r}\n"
      f"c.manual_dir = {config.data.manual_dir!r}\n"
      "src = datasets.load_sources(c, ['validation'])['validation']\n"
      "assert len(src) == 1014\n"
      "print('tensorflow' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_changed_raw_files_are_detected_not_silently_reused(tmp_path, smoke_config):
  """TFDS reuses a built dataset: a changed file or manual dir must not go unnoticed."""
  manual = tmp_path / "raw"
  manual.mkdir()
  for stem in ("train", "val"):
    _write_gz(manual / f"{stem}.en.gz", [f"{stem} sentence {i}" for i in range(4)])
    _write_gz(manual / f"{stem}.fr.gz", [f"{stem} phrase {i}" for i in range(4)])
  config = smoke_config.copy_and_resolve_references()
  config.data.manual_dir = str(manual)
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  source = datasets.load_sources(config.data, ["train"])["train"]
  recorded = source.dataset_info.metadata[multi30k.RAW_FILES]
  assert recorded["train.fr.gz"] == hashlib.sha256(
      (manual / "train.fr.gz").read_bytes()).hexdigest()
  assert sorted(recorded) == ["train.en.gz", "train.fr.gz", "val.en.gz", "val.fr.gz"]

  copy = tmp_path / "copy"  # Another $MULTI30K_DIR with the same files is fine.
  shutil.copytree(manual, copy)
  config.data.manual_dir = str(copy)
  assert datasets.load_sources(config.data, ["train"])["train"][0]["fr"] == (
      b"train phrase 0")

  _write_gz(copy / "train.fr.gz", ["corrected phrase 0"] + [
      f"train phrase {i}" for i in range(1, 4)])
  (copy / "val.en.gz").unlink()
  _write_gz(copy / "test_2016_flickr.en.gz", ["a"])
  _write_gz(copy / "test_2016_flickr.fr.gz", ["b"])
  with pytest.raises(ValueError, match=(
      r"built from other raw files than those in .*copy \(test_2016_flickr.en.gz new;"
      r" test_2016_flickr.fr.gz new; train.fr.gz changed; val.en.gz missing now;"
      r" val.fr.gz unpaired now\)"
      r"\. Delete .*multi30k/en-fr/1.0.0 to rebuild")):
    datasets.load_sources(config.data, ["train"])

  shutil.rmtree(tmp_path / "tfds")  # The fix the error names: rebuilt from `copy`.
  source = datasets.load_sources(config.data, ["train", "test_2016_flickr"])["train"]
  assert source[0]["fr"] == b"corrected phrase 0"


def test_a_corrupt_built_file_is_named_with_the_fix(tmp_path, smoke_config):
  """Riegeli's chunk hashes catch flipped bytes: the error names the file and the fix."""
  manual = tmp_path / "raw"
  manual.mkdir()
  for stem in ("train", "val"):
    _write_gz(manual / f"{stem}.en.gz", [f"{stem} sentence {i}" * 20 for i in range(400)])
    _write_gz(manual / f"{stem}.fr.gz", [f"{stem} phrase {i}" * 20 for i in range(400)])
  config = smoke_config.copy_and_resolve_references()
  config.data.manual_dir = str(manual)
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  datasets.load_sources(config.data, ["validation"])
  (built,) = (tmp_path / "tfds").glob("multi30k/en-fr/*/*validation.array_record*")
  data = bytearray(built.read_bytes())
  for i in range(len(data) // 4, len(data) // 2, 7):
    data[i] ^= 0xFF
  built.write_bytes(bytes(data))

  source = datasets.load_sources(config.data, ["validation"])["validation"]
  fix = (rf"{built.name} could not be read .*hash mismatch.*damaged\. Delete"
         r" .*multi30k/en-fr/1.0.0 to rebuild")
  with pytest.raises(datasets.CorruptDatasetError, match=fix):
    datasets.text_pairs(source, "en", "fr")
  with pytest.raises(datasets.CorruptDatasetError, match=fix):
    for i in range(len(source)):
      source[i]
  import pickle  # grain's worker processes receive the source pickled.
  assert len(pickle.loads(pickle.dumps(source))) == len(source)
