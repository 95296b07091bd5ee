"""Group advantage estimators over rewards laid out prompt-major: rows p*G .. p*G+G-1 are one prompt's group."""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("grpo", "mean", "rloo")
STD_EPS = 1e-4  # as in the paper's reference code (added to the unbiased std)


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
  g = r.reshape(-1, group_size)
  mean = g.mean(axis=1, keepdims=True)
  if estimator == "grpo":
    std = g.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros_like(mean)
    adv = (g - mean) / (std + STD_EPS)
  elif estimator == "mean":
    adv = g - mean
  else:
    if group_size < 2:
      raise ValueError("rl.advantage='rloo' needs rl.samples_per_prompt >= 2")
    adv = (g - mean) * group_size / (group_size - 1)  # r - (sum - r) / (G - 1)
  adv = np.where(np.isclose(g, mean, rtol=0, atol=1e-12).all(axis=1, keepdims=True), 0.0, adv)
  return adv.reshape(-1).astype(np.float32)
