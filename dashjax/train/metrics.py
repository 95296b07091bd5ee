"""Per-step metrics: one JSON line each in metrics.jsonl, TensorBoard scalars, and curve.png at the end.

The workdir may be local or gs://: lines go through `dashjax.store.logs` (parts on an object store), and TensorBoard
events start a new file every `PART_LINES` steps there, since each flush uploads the open event file whole.
"""

from __future__ import annotations

import io
import math

from dashjax.store import paths
from dashjax.store.logs import PART_LINES, JsonlLog, read_jsonl


class MetricsWriter:
  """Writes on process 0 only; other processes of a multi-host run hold a no-op writer."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    import jax

    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = paths.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.enabled:
      return
    # Resuming, lines written after the checkpoint would be duplicated by the resumed run: drop them.
    self.log = JsonlLog(self.path, fresh=resume_step is None,
                        keep=None if resume_step is None else (lambda r: r.get("step", -1) <= resume_step))
    self._tb_steps = 0

  def _tensorboard(self):
    from tensorboardX import SummaryWriter

    rotate = paths.is_remote(self.workdir) and self._tb_steps >= PART_LINES
    if self.tb is None or rotate:
      if self.tb is not None:
        self.tb.close()
      self.tb, self._tb_steps = SummaryWriter(paths.join(self.workdir, "tb")), 0
    self._tb_steps += 1
    return self.tb

  def write(self, metrics: dict):
    if not self.enabled:
      return
    self.log.append(metrics)
    step, tb = metrics["step"], self._tensorboard()
    for k, v in metrics.items():
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
        tb.add_scalar(k, v, step)
    tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()
      self.tb = None
    if self.enabled:
      self.log.close()


def read_metrics(path: str) -> list[dict]:
  """The records of a JSON-lines log (local or gs://, joined or still in parts)."""
  return read_jsonl(path)


def plot_curve(workdir: str, title: str = "") -> str:
  """curve.png: reward and kept fraction per step, held-out accuracy where evaluated, time split per step."""
  # A bare Figure (no pyplot): drawing must not switch the caller's backend (a notebook's inline plots).
  from matplotlib.figure import Figure

  rows = read_metrics(paths.join(workdir, "metrics.jsonl"))
  out = paths.join(workdir, "curve.png")
  if not rows:
    return out
  steps = [r["step"] for r in rows]
  fig = Figure(figsize=(15, 4))
  axes = fig.subplots(1, 3)
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
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  paths.write_bytes(out, buf.getvalue())
  return out


def _read_evals(workdir: str) -> list[tuple[int, float, float]]:
  """(step, accuracy, standard error) per evaluation, the latest one per step (a resumed run may repeat one)."""
  path = paths.join(workdir, "eval.jsonl")
  latest = {r["step"]: (r["accuracy"], r.get("stderr") or 0.0) for r in read_metrics(path)}
  return [(s, a, e) for s, (a, e) in sorted(latest.items())]
