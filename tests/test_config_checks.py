"""Issue 9 item 5: fields that used to fail only after the model loaded are rejected by `validate` (which loads no
model), with one message naming the field. How long checking takes is measured by benchmarks/fuzz_cli.py, not
asserted here: a shared machine's wall clock says nothing about the code."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import tiny  # noqa: E402

from dashjax.config import ConfigError, validate  # noqa: E402

CASES = [
    ({"sampling.top_p": 0.0}, "sampling.top_p"),
    ({"sampling.top_p": 1.5}, "sampling.top_p"),
    ({"sampling.top_k": -1}, "sampling.top_k"),
    ({"reward.timeout_s": 0.0}, "reward.timeout_s"),
    ({"reward.workers": -1}, "reward.workers"),
    ({"data.train_size": -5}, "data.train_size"),
    ({"model.dtype": "float8"}, "model.dtype"),
    ({"train.checkpoint_every": -1}, "train.checkpoint_every"),
    ({"data.source": "gym", "data.task": "basic_arithmatic"}, "data.task"),
    ({"reward.fn": "no_such_module_xyz:score"}, "reward.fn"),
    ({"reward.fn": "os.path:no_such_function"}, "reward.fn"),
    ({"reward.fn": "gym"}, "reward.fn"),  # the gym scorer on a file dataset could only ever fail
    ({"data.task": "gsm_symbolic"}, "data.task"),  # a gym task name given to a file source: meaningless there
    ({"data.task_kwargs": {"min_digits": 2}}, "data.task_kwargs"),
    ({"data.bad_rows": "ignore"}, "data.bad_rows"),
    ({"model.source": "/no/such/model.gguf"}, "model.source"),
    ({"model.source": "no such model"}, "model.source"),
]


@pytest.mark.parametrize("overrides,field", CASES)
def test_bad_field_is_rejected_before_the_model_loads(overrides, field):
  c = tiny.get_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ConfigError) as e:
    validate(c, num_devices=1)
  assert str(e.value).startswith(field) and "\n" not in str(e.value), str(e.value)


def test_good_values_pass_and_suggest_close_task_names():
  c = tiny.get_config()
  c.reward.fn = "os.path:join"  # importable and callable
  c.sampling.top_p, c.sampling.top_k, c.reward.workers = 1.0, 0, 0
  validate(c, num_devices=1)
  c.data.source, c.data.task = "gym", "arithmetic"
  with pytest.raises(ConfigError, match="basic_arithmetic"):
    validate(c, num_devices=1)
