"""One training step's record: what its collect steps sampled and scored (or read, for SFT), which rows its updates
backpropped, and the step's metrics made from them."""

from __future__ import annotations

import time

import numpy as np


class StepLog:
  def __init__(self, collector, kl: bool):
    self.collector, self.kl = collector, kl
    self.t0 = time.perf_counter()
    self.slots0, self.wasted0 = collector.slot_steps, collector.wasted_slot_steps
    self.scored = []  # each collect call's Scored (RL)
    self.gold = []  # (RolloutBatch, completions cut at max_new_tokens) of each gold batch (SFT)
    self._backprop = {}  # id(batch) -> [R] bool: rows some update of this step backpropped

  @property
  def first_error(self) -> str | None:
    return next((sc.first_error for sc in self.scored if sc.first_error), None)

  def watch(self, parts):
    """The parts of one update, passed through; their rows are counted as kept."""
    for part in parts:
      mask = self._backprop.setdefault(id(part.batch), np.zeros(part.batch.num_rows, bool))
      mask[part.rows] = True
      yield part

  def metrics(self, step: int, epoch: int, result) -> dict:
    return self._sft(step, epoch, result) if self.gold else self._rl(step, epoch, result)

  def _rl(self, step, epoch, result) -> dict:
    scored = self.scored
    rewards = np.concatenate([sc.rewards for sc in scored])
    truncated = np.concatenate([sc.truncated for sc in scored])
    lengths = np.concatenate([sc.batch.completion_mask_RxN.sum(1) for sc in scored])
    kept = sum(int(mask.sum()) for mask in self._backprop.values())
    sample_s = sum(sc.sample_s for sc in scored)
    s = result.stats
    slot_steps = self.collector.slot_steps - self.slots0
    return {
        "step": step, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "kept_fraction": kept / len(rewards), "micro_steps": result.micro_steps,
        "sampler_calls": sum(sc.sampler_calls for sc in scored), "optimizer_updates": result.updates,
        "update_skipped": result.skipped, "sample_s": sample_s, "reward_s": sum(sc.reward_s for sc in scored),
        "update_s": result.seconds, "step_s": time.perf_counter() - self.t0,
        "tokens_per_s": float(lengths.sum()) / max(sample_s, 1e-9), "response_len": float(lengths.mean()),
        "truncated_fraction": float(truncated.mean()),
        "kl": (s["kl"] / s["weight"]) if self.kl and s["weight"] > 0 else None,
        "pg_loss": s["pg_loss"], "clip_frac": (s["clip_frac"] / s["weight"]) if s["weight"] > 0 else 0.0,
        "grad_norm": result.grad_norm if result.updates else None,
        "reward_timeouts": sum(int(sc.timed_out.sum()) for sc in scored),
        "reward_errors": sum(sc.num_errors for sc in scored), "decode_slot_steps": slot_steps,
        "wasted_slot_fraction": (self.collector.wasted_slot_steps - self.wasted0) / max(slot_steps, 1),
        "epoch": epoch,
    }

  def _sft(self, step, epoch, result) -> dict:
    s = result.stats
    lengths = np.concatenate([batch.completion_mask_RxN.sum(1) for batch, _ in self.gold])
    return {"step": step, "nll": s["entropy_proxy"] / max(s["weight"], 1e-9), "micro_steps": result.micro_steps,
            "optimizer_updates": result.updates, "update_s": result.seconds,
            "step_s": time.perf_counter() - self.t0, "target_len": float(lengths.mean()),
            "targets_cut": sum(cut for _, cut in self.gold), "grad_norm": result.grad_norm, "epoch": epoch,
            "kept_fraction": 1.0, "reward_mean": float("nan")}
