"""The algorithms as values (dashjax.rl.algorithms): each one's schedule of sampling and updates, its own config
checks, and a new algorithm (PODS-style down-sampling) added as one class and one registry entry."""

import numpy as np
import pytest
from configs_for_tests import tiny_config as _config

from dashjax.config import ConfigError, validate
from dashjax.rl.advantages import group_advantages
from dashjax.rl.algorithms import ALGORITHMS, Sampled, algorithm
from dashjax.rl.batching import RolloutBatch

# Rewards of 4 prompts x 4 samples: prompt 0 all equal (advantage 0), the others mixed.
REWARDS = np.array([1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0], np.float32)


class _FakeSource:
  """Sampled rows without a model: rewards from REWARDS by prompt index; records the order of events."""

  def __init__(self, G=4):
    self.G, self.events = G, []

  def sample(self, examples, fold=None):
    self.events.append(("sample", fold, len(examples)))
    rewards = np.concatenate([REWARDS[e * self.G:(e + 1) * self.G] for e in examples])
    R = len(rewards)
    batch = RolloutBatch(np.zeros((R, 3), np.int32), np.ones((R, 3), bool), np.ones((R, 2), np.float32),
                         np.zeros((R, 2), np.float32), 1)
    return Sampled(batch, group_advantages(rewards, self.G), rewards)

  def gold(self, examples):
    self.events.append(("gold", None, len(examples)))
    R = len(examples)
    return Sampled(RolloutBatch(np.zeros((R, 3), np.int32), np.ones((R, 3), bool), np.ones((R, 2), np.float32),
                                np.zeros((R, 2), np.float32), 1), np.ones(R, np.float32))


def _schedule(algo, source):
  """[(update index, rows, counted, scale)] in the order the updater would see them, sampling interleaved."""
  out = []
  for u, parts in enumerate(algo.updates(list(range(4)), source)):
    for part in parts:
      source.events.append(("part", u, len(part.rows)))
      out.append((u, part.rows.tolist(), part.counted.tolist(), part.scale))
  return out


def test_each_algorithm_schedules_its_sampling_and_updates():
  everything = list(range(16))
  src = _FakeSource()
  assert _schedule(algorithm(_config()), src) == [(0, list(range(4, 16)), everything, 1.0)]  # dash drops prompt 0
  assert src.events == [("sample", None, 4), ("part", 0, 12)]
  assert _schedule(algorithm(_config(**{"rl.algo": "pg"})), _FakeSource()) == [(0, everything, everything, 1.0)]
  src = _FakeSource()  # grpo: a micro-batch sampled, then backpropped, then the next; one update
  assert _schedule(algorithm(_config(**{"rl.algo": "grpo"})), src) == [(0, [0, 1, 2, 3], [0, 1, 2, 3], 0.25)] * 4
  assert src.events == [e for i in range(4) for e in (("sample", i, 1), ("part", 0, 4))]
  multi = algorithm(_config(**{"rl.algo": "ppo_multi", "rl.epochs_per_batch": 3}))
  src = _FakeSource()
  assert _schedule(multi, src) == [(u, everything, everything, 1.0) for u in range(3)]
  assert [e[0] for e in src.events].count("sample") == 1  # three updates of one sampled batch
  mini = algorithm(_config(**{"rl.algo": "ppo_mini", "rl.updates_per_batch": 2}))
  assert _schedule(mini, _FakeSource()) == [(0, list(range(8)), list(range(8)), 1.0),
                                            (1, list(range(8, 16)), list(range(8, 16)), 1.0)]
  src = _FakeSource()
  assert _schedule(algorithm(_config(**{"mode": "sft"})), src) == [(0, [0, 1, 2, 3], [0, 1, 2, 3], 1.0)]
  assert src.events[0] == ("gold", None, 4)


def test_what_is_true_of_each_algorithm():
  facts = {name: (a.on_policy, a.filtering, a.sampler_rows_field) for name, a in ALGORITHMS.items()}
  assert facts["dash"] == (True, True, "sampling.batch_size")
  assert facts["grpo"] == (True, False, "train.micro_batch_size")
  assert facts["ppo_multi"][:2] == facts["ppo_mini"][:2] == (False, False)
  assert algorithm(_config(**{"rl.algo": "grpo"})).sampler_rows == 4  # tiny: micro-batch 4, sampler batch 16
  assert algorithm(_config()).sampler_rows == 16
  assert validate(_config(), num_devices=1).filtering and not validate(_config(**{"rl.algo": "pg"}),
                                                                         num_devices=1).filtering


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_one_sample_per_prompt_is_refused_in_one_line(algo):
  """A group of one has advantage 0 under every estimator: the run would train nothing, and used to exit 0."""
  for advantage in ("grpo", "mean", "rloo"):
    c = _config(**{"rl.algo": algo, "rl.samples_per_prompt": 1, "rl.advantage": advantage})
    with pytest.raises(ConfigError) as e:
      validate(c, num_devices=1)
    msg = str(e.value)
    assert msg.startswith("rl.samples_per_prompt=1") and "set rl.samples_per_prompt >= 2" in msg, msg
    assert "\n" not in msg
  validate(_config(**{"mode": "sft", "rl.samples_per_prompt": 1}), num_devices=1)  # sft has no groups


@pytest.mark.parametrize("overrides,fields", [
    ({"rl.algo": "sac"}, ["rl.algo", "pods"]),
    ({"rl.algo": "pods", "rl.samples_per_prompt": 2, "sampling.batch_size": 8}, ["rl.samples_per_prompt", "pods"]),
    ({"rl.algo": "pg", "rl.updates_per_batch": 2}, ["rl.updates_per_batch", "ppo_mini"]),
    ({"mode": "sft", "train.micro_batch_size": 3}, ["mode='sft'", "train.micro_batch_size"]),
])
def test_algorithm_checks_name_the_fields(overrides, fields):
  with pytest.raises(ConfigError) as e:
    validate(_config(**overrides), num_devices=1)
  for f in fields:
    assert f in str(e.value)


def test_pods_backprops_the_max_variance_half_of_each_group():
  """Prompt 0's rewards are all 1 (variance 0 whichever 2 are kept); the mixed groups keep one 1 and one 0."""
  (parts,) = list(algorithm(_config(**{"rl.algo": "pods"})).updates(list(range(4)), _FakeSource()))
  (part,) = parts
  assert len(part.rows) == 8 and (part.rows == part.counted).all()
  groups = part.rows.reshape(4, 2) // 4
  assert (groups == np.arange(4)[:, None]).all()  # two rows of every prompt
  kept = REWARDS[part.rows].reshape(4, 2)
  assert (kept[0] == 1).all() and (np.sort(kept[1:], 1) == [0, 1]).all()
  for pair in part.rows.reshape(4, 2):  # advantages over the kept rows alone: 0 for prompt 0, +-0.707 for the rest
    np.testing.assert_allclose(part.adv_R[pair], group_advantages(REWARDS[pair], 2), rtol=1e-6)
  assert (part.adv_R[part.rows][:2] == 0).all() and (np.abs(part.adv_R[part.rows][2:]) > 0.7).all()
  dropped = np.setdiff1d(np.arange(16), part.rows)
  assert (part.adv_R[dropped] == 0).all()


def test_pods_trains_through_the_trainer(tmp_path):
  from dashjax.train.trainer import Trainer

  # Without prompt sharing: with it, each group is packed whole (2 of its 4 rows masked), as many micro-steps as pg.
  trainer = Trainer(_config(**{"rl.algo": "pods", "train.share_prompts": False}), str(tmp_path))
  m = trainer.train_step()
  trainer.close()
  assert m["kept_fraction"] == 0.5 and m["micro_steps"] == 2 and m["optimizer_updates"] == 1
  assert m["grad_norm"] > 0
