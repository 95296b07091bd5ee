"""Summaries, the aggregate over seeds, tables and plots for benchmarks/dash_vs_grpo.py."""

from __future__ import annotations

import os

import numpy as np

from common import table

PHASES = ("sample_s", "reward_s", "update_s")
COLORS = {"grpo": "tab:red", "dash": "tab:blue", "pg": "tab:green"}


def summarize(algo, steps, evaluation) -> dict:
  s = {"algo": algo, "steps": len(steps), "optimizer_updates": sum(m["optimizer_updates"] for m in steps),
       "updates_skipped": sum(m["update_skipped"] for m in steps)}
  for k in PHASES + ("step_s",):
    vals = [m[k] for m in steps]
    s[f"{k}_mean"], s[f"{k}_total"] = float(np.mean(vals)), float(np.sum(vals))
  s["total_s"] = sum(s[f"{k}_total"] for k in PHASES)
  s["sample_share"] = s["sample_s_total"] / s["total_s"]
  s["sampler_calls"] = sum(m["sampler_calls"] for m in steps)
  s["micro_steps"] = sum(m["micro_steps"] for m in steps)
  if "wasted_slot_fraction" in steps[0]:  # decode slot-steps spent on rows that had ended
    s["decode_slot_steps"] = int(sum(m["decode_slot_steps"] for m in steps))
    wasted = sum(m["wasted_slot_fraction"] * m["decode_slot_steps"] for m in steps)
    s["wasted_slot_steps"] = int(round(wasted))
    s["wasted_slot_fraction"] = wasted / max(s["decode_slot_steps"], 1)
    s["wasted_slot_fraction_mean"] = float(np.mean([m["wasted_slot_fraction"] for m in steps]))
  s["kept_fraction_mean"] = float(np.mean([m["kept_fraction"] for m in steps]))
  s["reward_mean"] = float(np.mean([m["reward_mean"] for m in steps]))
  s["response_len_mean"] = float(np.mean([m["response_len"] for m in steps]))
  s["truncated_fraction_mean"] = float(np.mean([m["truncated_fraction"] for m in steps]))
  tail = steps[-max(1, len(steps) // 4):]
  s["reward_last_quarter"] = float(np.mean([m["reward_mean"] for m in tail]))
  if evaluation is not None:
    s["accuracy"], s["accuracy_stderr"] = evaluation["accuracy"], evaluation["stderr"]
  return s


def ratios_of(summaries) -> dict:
  by = {s["algo"]: s for s in summaries}
  ratios = {}
  if "grpo" in by:
    for a, s in by.items():
      if a != "grpo":
        ratios[f"{a}_over_grpo"] = s["total_s"] / by["grpo"]["total_s"]
        for k in PHASES:
          ratios[f"{a}_over_grpo_{k[:-2]}"] = s[f"{k}_total"] / max(by["grpo"][f"{k}_total"], 1e-9)
  return ratios


def aggregate(runs, algos) -> dict:
  """Over seeds: held-out accuracy mean/sd (and each seed's), time ratios per seed, per-step length/truncation."""
  out = {"seeds": [r["seed"] for r in runs], "before": [r["before"]["accuracy"] for r in runs if r.get("before")],
         "algos": {}}
  for a in algos:
    acc = [r["after"][a]["accuracy"] for r in runs if r.get("after")]
    per = {"accuracy_per_seed": acc,
           "accuracy_mean": float(np.mean(acc)) if acc else None,
           "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
           "gain_per_seed": [r["after"][a]["accuracy"] - r["before"]["accuracy"] for r in runs if r.get("after")
                             and r.get("before")],
           "total_s_per_seed": [next(s["total_s"] for s in r["summary"] if s["algo"] == a) for r in runs],
           "sample_share_per_seed": [next(s["sample_share"] for s in r["summary"] if s["algo"] == a) for r in runs],
           "response_len": [[m["response_len"] for m in r["steps"][a]] for r in runs],
           "truncated_fraction": [[m["truncated_fraction"] for m in r["steps"][a]] for r in runs],
           "reward": [[m["reward_mean"] for m in r["steps"][a]] for r in runs]}
    per["response_len_mean_per_seed"] = [float(np.mean(x)) for x in per["response_len"]]
    per["response_len_last_quarter_per_seed"] = [float(np.mean(x[-max(1, len(x) // 4):])) for x in per["response_len"]]
    per["truncated_fraction_mean_per_seed"] = [float(np.mean(x)) for x in per["truncated_fraction"]]
    if a != "grpo" and "grpo" in algos:
      per["over_grpo_per_seed"] = [r["ratios"][f"{a}_over_grpo"] for r in runs]
      per["over_grpo_sample_per_seed"] = [r["ratios"][f"{a}_over_grpo_sample"] for r in runs]
    out["algos"][a] = per
  return out


def fmt_summary(summaries, before) -> str:
  head = ["algo", "steps (updates)", "sample s/step", "reward s/step", "update s/step", "total s/step", "sample s",
          "reward s", "update s", "total s", "sampler calls", "micro-steps", "kept fraction", "train reward",
          "response len", "truncated", "wasted slot-steps", "held-out acc"]
  rows = []
  for s in summaries:
    acc = f"{s['accuracy']:.3f} +/- {s['accuracy_stderr']:.3f}" if "accuracy" in s else "-"
    rows.append([s["algo"], f"{s['steps']} ({s['optimizer_updates']})", f"{s['sample_s_mean']:.2f}",
                 f"{s['reward_s_mean']:.2f}", f"{s['update_s_mean']:.2f}", f"{s['total_s'] / s['steps']:.2f}",
                 f"{s['sample_s_total']:.1f}", f"{s['reward_s_total']:.1f}", f"{s['update_s_total']:.1f}",
                 f"{s['total_s']:.1f}", str(s["sampler_calls"]), str(s["micro_steps"]),
                 f"{s['kept_fraction_mean']:.3f}", f"{s['reward_mean']:.3f}", f"{s['response_len_mean']:.1f}",
                 f"{s['truncated_fraction_mean']:.2f}",
                 f"{s['wasted_slot_fraction']:.3f}" if "wasted_slot_fraction" in s else "-", acc])
  if before is not None:
    rows.append(["(before training)"] + [""] * (len(head) - 2) + [f"{before['accuracy']:.3f} +/- {before['stderr']:.3f}"])
  return table(head, rows)


def fmt_seeds(agg) -> str:
  head = ["algo", "held-out acc mean +/- sd", "per seed", "gain per seed", "x grpo time per seed",
          "response len (mean, last quarter) per seed", "truncated per seed"]
  rows = []
  for a, p in agg["algos"].items():
    acc = "-" if p["accuracy_mean"] is None else (
        f"{p['accuracy_mean']:.3f} +/- {p['accuracy_sd']:.3f}" if p["accuracy_sd"] is not None else
        f"{p['accuracy_mean']:.3f}")
    rows.append([a, acc, ", ".join(f"{x:.3f}" for x in p["accuracy_per_seed"]),
                 ", ".join(f"{x:+.3f}" for x in p["gain_per_seed"]),
                 ", ".join(f"{x:.3f}" for x in p.get("over_grpo_per_seed", [])) or "1",
                 ", ".join(f"{x:.1f} ({y:.1f})" for x, y in zip(p["response_len_mean_per_seed"],
                                                             p["response_len_last_quarter_per_seed"])),
                 ", ".join(f"{x:.2f}" for x in p["truncated_fraction_mean_per_seed"])])
  rows.append(["(before training)", "", ", ".join(f"{x:.3f}" for x in agg["before"]), "", "", "", ""])
  return table(head, rows)


def plot_seeds(path, runs, algos, title):
  """Train reward (accuracy on the training samples) and response length against step, one line per seed and
  algorithm; held-out accuracy before and after as markers."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  styles = ["-", "--", ":", "-."]
  fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4.4))
  for j, r in enumerate(runs):
    ls = styles[j % len(styles)]
    for a in algos:
      c = COLORS.get(a)
      steps = r["steps"][a]
      x = np.arange(1, len(steps) + 1)
      rew = np.array([m["reward_mean"] for m in steps])
      k = min(4, len(rew))
      ax.plot(x[k - 1:], np.convolve(rew, np.ones(k) / k, mode="valid"), ls, color=c, lw=1.5,
              label=f"{a} seed {r['seed']}")
      if r.get("after"):
        ax.plot([len(steps) + 0.5 + 0.3 * j], [r["after"][a]["accuracy"]], "o", color=c, ms=6)
      bx.plot(x, [m["response_len"] for m in steps], ls, color=c, lw=1.5, label=f"{a} seed {r['seed']}")
      cx.plot(x, [m["truncated_fraction"] for m in steps], ls, color=c, lw=1.5)
    if r.get("before"):
      ax.plot([0], [r["before"]["accuracy"]], "ks", ms=5)
  ax.set_xlabel("step")
  ax.set_ylabel("train reward (mean of 4 steps); o: held-out after, s: before")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=6, ncol=2)
  ax.set_title("accuracy against step")
  bx.set_xlabel("step")
  bx.set_ylabel("mean response length (tokens)")
  bx.set_title("response length against step")
  cx.set_xlabel("step")
  cx.set_ylabel("fraction of rows truncated")
  cx.set_ylim(-0.02, 1.02)
  cx.set_title("truncated rows against step")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_one(path, per_algo, summaries, before, title):
  """One seed: reward against cumulative seconds, and time per phase."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
  if before is not None:
    ax.errorbar([0], [before["accuracy"]], yerr=[before["stderr"]], fmt="ks", capsize=3, label="held-out, before")
  for s in summaries:
    a, steps = s["algo"], per_algo[s["algo"]]
    x = np.cumsum([m["step_s"] for m in steps])
    r = np.array([m["reward_mean"] for m in steps])
    c = COLORS.get(a) if "@" not in a else None
    ax.plot(x, r, "-", color=c, alpha=0.3, lw=1)
    k = min(4, len(r))
    ax.plot(x[k - 1:], np.convolve(r, np.ones(k) / k, mode="valid"), "-", color=c, lw=2,
            label=f"{a}: train reward (mean of {k} steps)")
    if "accuracy" in s:
      ax.errorbar([x[-1]], [s["accuracy"]], yerr=[s["accuracy_stderr"]], fmt="o", color=c, capsize=3, ms=8,
                  label=f"{a}: held-out, after")
  ax.set_xlabel("cumulative wall-clock seconds of training steps")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=7, loc="best")
  ax.set_title("reward against time")
  bottom = np.zeros(len(summaries))
  names = [s["algo"] for s in summaries]
  for k, c in zip(PHASES, ("tab:orange", "tab:gray", "tab:purple")):
    vals = np.array([s[f"{k}_total"] for s in summaries])
    bx.bar(names, vals, bottom=bottom, color=c, label=k.replace("_s", ""))
    bottom += vals
  bx.set_ylabel("seconds over all steps")
  bx.legend(fontsize=8)
  bx.set_title("time per phase")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
