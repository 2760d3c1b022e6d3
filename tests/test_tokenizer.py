"""SentencePiece: exact round trips, byte fallback, fixed special ids, reuse per workdir."""
import os

from data import tokenizer as tokenizer_lib
from storage import layout


def test_round_trip_every_validation_sentence(prepared):
  config, _, sources, tokenizer = prepared
  for i in range(len(sources["validation"])):
    for lang in (config.data.source_lang, config.data.target_lang):
      text = sources["validation"][i][lang].decode("utf-8")
      # The one documented normalisation: runs of spaces collapse, ends are stripped.
      expected = " ".join(filter(None, text.split(" ")))
      assert tokenizer.decode(tokenizer.encode(text)) == expected, (i, lang, text)


def test_unseen_characters_survive_as_bytes(prepared):
  _, _, _, tokenizer = prepared
  text = "Un chat 🐈 dort 猫が寝ている \x07bell\x1b[0m ☃"
  ids = tokenizer.encode(text)
  assert tokenizer_lib.UNK_ID not in ids
  assert tokenizer.byte_piece_mask()[ids].any()
  assert tokenizer.decode(ids) == text


def test_special_ids_and_decode_stops_at_eos(prepared):
  _, _, _, tokenizer = prepared
  assert (tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID, tokenizer_lib.UNK_ID) == (0, 1, 2)
  ids = tokenizer.encode("deux chiens")
  assert not {tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID} & set(ids)  # Not from encode.
  assert tokenizer.decode(ids + [tokenizer_lib.EOS_ID] + ids + [0, 0]) == "deux chiens"
  assert tokenizer.vocab_size == prepared[0].data.vocab_size


def test_second_run_reuses_the_model(prepared):
  config, workdir, _, tokenizer = prepared
  path = workdir / layout.TOKENIZER_FILE
  mtime = os.stat(path).st_mtime_ns

  def fail():
    raise AssertionError("the tokenizer was retrained instead of reused")

  again = tokenizer_lib.train_or_load(workdir, fail, vocab_size=config.data.vocab_size)
  assert os.stat(path).st_mtime_ns == mtime
  text = "Une femme en robe rouge."
  assert again.encode(text) == tokenizer.encode(text)


def test_training_twice_writes_the_same_bytes(prepared, tmp_path):
  """Same sentences, same seed: the same file, so run.json's sha256 binds the tokenizer,
  not the temporary folder it was trained in."""
  config, _, sources, _ = prepared
  sentences = [example[lang].decode("utf-8") for example in sources["validation"]
               for lang in (config.data.source_lang, config.data.target_lang)]
  paths = [tmp_path / "a" / "spm.model", tmp_path / "b" / "spm.model"]
  for path in paths:
    tokenizer_lib.train(sentences, path, vocab_size=500)
  assert paths[0].read_bytes() == paths[1].read_bytes()
