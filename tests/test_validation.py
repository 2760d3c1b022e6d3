"""Config validation before a run writes anything; a data filter that keeps nothing."""
import pytest

from configs import default
from configs import multi30k_best
from configs import smoke
from configs import transformer_base
from configs import transformer_big
from recipes import prepare
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
