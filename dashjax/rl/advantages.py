"""Group advantage estimators over rewards laid out prompt-major: rows p*G .. p*G+G-1 are one prompt's group."""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("grpo", "mean", "rloo")
STD_EPS = 1e-4  # as in the paper's reference code (added to the unbiased std)


def group_size_problem(estimator: str, group_size: int) -> str | None:
  """Why groups of `group_size` rows would train nothing under `estimator` (None: they can train)."""
  if group_size < 2:  # every estimator compares a reward with its group's others: alone, its advantage is 0
    return (f"rl.samples_per_prompt={group_size}: rl.advantage={estimator!r} compares each reward with the other "
            f"samples of its prompt, so a group of one has advantage 0 and nothing would be learned; set "
            f"rl.samples_per_prompt >= 2 (e.g. 4)")
  return None


def group_advantages(rewards_R: np.ndarray, group_size: int, estimator: str = "grpo") -> np.ndarray:
  """Advantages [R] (float32), computed on the host once all rewards of the sampled batch are known.

  grpo: (r - mean) / (unbiased std + 1e-4); mean: r - mean (Dr. GRPO); rloo: r - mean of the other G-1 rewards.
  A group whose rewards are all equal gets exactly 0 under every estimator, which is what gradient filtering drops.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"rl.advantage={estimator!r} is not one of {ESTIMATORS}")
  r = np.asarray(rewards_R, np.float64)
  if r.size % group_size:
    raise ValueError(f"{r.size} rewards do not split into groups of rl.samples_per_prompt={group_size}")
  problem = group_size_problem(estimator, group_size)
  if problem:
    raise ValueError(problem)
  g = r.reshape(-1, group_size)
  mean = g.mean(axis=1, keepdims=True)
  if estimator == "grpo":
    adv = (g - mean) / (g.std(axis=1, ddof=1, keepdims=True) + STD_EPS)
  elif estimator == "mean":
    adv = g - mean
  else:
    adv = (g - mean) * group_size / (group_size - 1)  # r - (sum - r) / (G - 1)
  adv = np.where(np.isclose(g, mean, rtol=0, atol=1e-12).all(axis=1, keepdims=True), 0.0, adv)
  return adv.reshape(-1).astype(np.float32)
