"""Per-step metrics: one JSON line each in metrics.jsonl, TensorBoard scalars, and curve.png at the end."""

from __future__ import annotations

import json
import math
import os


class MetricsWriter:
  """Writes on process 0 only; other processes of a multi-host run hold a no-op writer."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    import jax

    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      # Lines written after the checkpoint we resume from would be duplicated by the resumed run: drop them.
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", -1) <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    from tensorboardX import SummaryWriter

    self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, metrics: dict):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(metrics) + "\n")
    step = metrics["step"]
    for k, v in metrics.items():
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curve(workdir: str, title: str = "") -> str:
  """curve.png: reward and kept fraction per step, held-out accuracy where evaluated, time split per step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  out = os.path.join(workdir, "curve.png")
  if not rows:
    return out
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  ax.plot(steps, [r.get("reward_mean", float("nan")) for r in rows], label="train reward (mean)")
  ev = _read_evals(workdir)
  if ev:
    ax.errorbar([s for s, _, _ in ev], [a for _, a, _ in ev], yerr=[e for _, _, e in ev], fmt="o-", capsize=3,
                label="held-out accuracy (+/- s.e.)")
  ax.set_xlabel("step")
  ax.set_ylim(-0.02, 1.02)
  ax.legend()
  ax.set_title("reward")
  ax = axes[1]
  ax.plot(steps, [r.get("kept_fraction", float("nan")) for r in rows], label="kept fraction")
  ax.plot(steps, [r.get("truncated_fraction", float("nan")) for r in rows], label="truncated fraction")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("step")
  ax.legend()
  ax.set_title("filtering")
  ax = axes[2]
  for key in ("sample_s", "reward_s", "update_s"):
    ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
  ax.set_xlabel("step")
  ax.set_ylabel("seconds")
  ax.legend()
  ax.set_title("time per step")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def _read_evals(workdir: str) -> list[tuple[int, float, float]]:
  """(step, accuracy, standard error) per evaluation, the latest one per step (a resumed run may repeat one)."""
  path = os.path.join(workdir, "eval.jsonl")
  if not os.path.exists(path):
    return []
  latest = {r["step"]: (r["accuracy"], r.get("stderr") or 0.0) for r in read_metrics(path)}
  return [(s, a, e) for s, (a, e) in sorted(latest.items())]
