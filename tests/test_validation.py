"""Config validation before a run writes anything; a data filter that keeps nothing."""
import re

import pytest

from configs import default
from configs import multi30k_best
from configs import smoke
from configs import transformer_base
from configs import transformer_big
from recipes import prepare
from storage import layout
from training import validate


@pytest.mark.parametrize("module", [default, smoke, multi30k_best, transformer_base,
                                    transformer_big])
def test_shipped_configs_are_valid(module):
  validate.validate_config(module.get_config())


@pytest.mark.parametrize("field,value", [
    ("checkpoint_every_steps", 0), ("eval_every_steps", -1), ("log_every_steps", 0),
    ("max_checkpoints_to_keep", 0), ("average_last_checkpoints", 0),
    ("decode.beam_size", 0), ("batch_tokens", 0), ("data.max_length", 0),
    ("data.eval_max_length", -5), ("data.max_length", 512),
    ("data.eval_max_length", 512), ("num_train_steps", 0), ("grad_accum_steps", 0),
    ("batch_tokens", 16),
])
def test_a_bad_field_is_named(field, value):
  config = smoke.get_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(validate.ConfigError, match=rf"config\.{field}={value}: must be"):
    validate.validate_config(config)


@pytest.mark.parametrize("field,value,rule", [
    ("decode.alpha", float("nan"), "a finite number >= 0"),
    ("decode.alpha", -0.5, "a finite number >= 0"),
    ("decode.max_len_a", -1.0, "a finite number >= 0"),
    ("decode.max_len_b", -3.0, "a finite number >= 0"),
    ("decode.beam_size", 1000, "an integer in \\[1, 16\\]"),
    ("model.dropout_rate", 1.5, "in \\[0, 1\\)"),
    ("model.attention_dropout_rate", -0.1, "in \\[0, 1\\)"),
    ("grad_clip_norm", -1.0, ">= 0 \\(0: no clipping\\)"),
    ("model.num_heads", 5, None),
    ("learning_rate", float("inf"), "> 0"),
    ("label_smoothing", 1.0, "in \\[0, 1\\)"),
    ("adam_b1", float("nan"), "a finite number"),
])
def test_a_bad_value_is_refused_with_its_allowed_range(field, value, rule):
  config = smoke.get_config()
  config.update_from_flattened_dict({field: value})
  problems = validate.config_problems(config)
  if rule is None:  # num_heads=5 does not divide emb_dim=32 and qkv_dim=32.
    assert [p.split("=")[0] for p in problems] == ["config.model.emb_dim",
                                                   "config.model.qkv_dim"], problems
    assert "a multiple of model.num_heads=5" in problems[0]
    return
  assert len(problems) == 1, problems
  assert re.match(rf"config\.{re.escape(field)}=.*: must be {rule}", problems[0]), (
      problems)


def test_an_output_limit_of_no_tokens_is_refused():
  config = smoke.get_config()
  config.decode.max_len_a = config.decode.max_len_b = 0.0
  assert validate.config_problems(config) == [
      "config.decode.max_len_b=0.0: must be > 0 when max_len_a is 0 (the output"
      " limit is max_len_a * source_len + max_len_b tokens)."]


def test_config_json_is_never_written_with_nan(tmp_path):
  config = smoke.get_config()
  config.decode.alpha = float("nan")
  with pytest.raises(ValueError, match="Out of range float values"):
    layout.write_config(tmp_path, config)
  assert not (tmp_path / "config.json").exists()


def test_every_problem_is_reported_at_once():
  config = smoke.get_config()
  config.checkpoint_every_steps = 0
  config.decode.beam_size = 0
  problems = validate.config_problems(config)
  assert len(problems) == 2, problems


def test_final_eval_splits_must_exist():
  config = smoke.get_config()
  config.final_eval_splits = ("validation", "test_2099")
  with pytest.raises(validate.ConfigError, match=r"\['test_2099'\] not in multi30k"):
    validate.validate_splits(config, ["train", "validation", "test_2016_flickr"])
  validate.validate_splits(config, ["validation", "test_2099"])


def test_config_diff_names_changed_fields():
  config = smoke.get_config()
  saved = config.to_dict()
  config.model.emb_dim = 64
  config.optimizer = "adafactor"
  assert validate.config_diff(saved, config) == [
      "model.emb_dim: 32 -> 64", "optimizer: 'adamw' -> 'adafactor'"]


def test_a_filter_that_keeps_no_training_pair_is_an_error(prepared):
  config = prepared[0].copy_and_resolve_references()
  config.data.max_length = 1  # Every caption is longer.
  with pytest.raises(ValueError, match="No training pair is left.*max_length=1"):
    prepare.prepare_on_all_processes(config, str(prepared[1]))


def test_schedule_change_names_the_first_step_whose_rate_moves():
  new = default.get_config()
  new.num_train_steps = 1100  # The steps below depend on the decay's slope.
  saved = new.to_dict()
  del saved["schedule"]  # A config.json from before the field: counted unchanged.
  assert validate.schedule_change(saved, new, start_step=100) is None
  new.learning_rate *= 2
  assert validate.schedule_change(saved, new, start_step=100).startswith(
      "step 101: learning rate")
  new.learning_rate /= 2
  new.schedule, saved["schedule"] = "linear", "linear"
  new.num_train_steps += 1  # The decay would now end one step later...
  assert validate.schedule_change(saved, new, start_step=300).startswith("step 301")
  # ...but warmup (200 steps) does not depend on the end.
  assert validate.schedule_change(saved, new, start_step=100).startswith("step 202")
  assert validate.schedule_change(saved, new, start_step=new.num_train_steps) is None
