"""DASH against the paper's GRPO baseline and PG (preemptive sampling without filtering), steps interleaved.

  python benchmarks/dash_vs_grpo.py --quick     # SmolLM2, 4 steps, 64 held-out prompts (~7 min on 2 CPU cores)
  python benchmarks/dash_vs_grpo.py             # the main job's settings: 24 steps, 200 held-out prompts (~35 min)
  python benchmarks/dash_vs_grpo.py --algos grpo,dash,dash@continuous   # dash with both samplers side by side

One Trainer per algorithm from the same config (configs/smollm2_arith.py by default), differing only in `rl.algo`:
same initial weights, prompts (same data seed and order), P, G, max new tokens, micro-batch, learning rate and number
of optimizer updates. A label `ALGO@static` or `ALGO@continuous` also sets `sampling.continuous` for that trainer. Their `train_step()` calls alternate round-robin, the order rotating every step, so drift in
machine load hits all three alike. Compilation is excluded: before step 1 each Trainer's sampler, micro-step and
optimizer step are compiled and run once on throwaway inputs (its model copy is untouched), and the jit caches are
checked afterwards to show that training compiled nothing more. Held-out accuracy is measured once before training
(all start from the same weights) and for each algorithm at the end, with the config's evaluation (greedy by
default) on the same prompts.

Total time per algorithm = sample + reward + update seconds summed over the training steps; `dash_over_grpo` and
`pg_over_grpo` are ratios of those totals.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, ROOT, enable_compile_cache, environment, fresh_copy, load_config, log,  # noqa: E402
                    table, write_json)

PHASES = ("sample_s", "reward_s", "update_s")


def build_trainers(config, algos, out_dir):
  from flax import nnx

  from dashjax.models.loading import load_model
  from dashjax.train.trainer import Trainer

  model, tokenizer = load_model(config.model.source, dtype=config.model.dtype)
  graphdef, state = nnx.split(model)
  trainers = {}
  for algo in algos:
    c = copy.deepcopy(config)
    c.rl.algo, _, sampler = algo.partition("@")
    if sampler:
      c.sampling.continuous = sampler == "continuous"
    # Each Trainer owns its buffers: the learner donates parameters, so they must not be shared.
    trainers[algo] = Trainer(c, os.path.join(out_dir, algo), model_and_tokenizer=(nnx.merge(graphdef, fresh_copy(state)),
                                                                                 tokenizer))
  return trainers


def warm_up(trainer) -> float:
  """Compiles and runs once the sampler (at this algorithm's call size), micro-step and optimizer step."""
  from dashjax.train.update import UpdateResult

  t0 = time.perf_counter()
  examples = trainer.train_examples[:trainer.collector.prompts_per_call]  # not the iterator: data order unchanged
  sc = trainer.collector.collect(trainer.sampler_params(), examples, jax.random.key(2**31 - 1))
  rows = np.arange(trainer.plan.micro_batch_size)
  zeros = np.zeros(sc.batch.num_rows, np.float32)
  weights = np.zeros(sc.batch.completion_mask_RxN.shape, np.float32)
  learner = trainer.learner
  grads = trainer.updater.accumulate(trainer.params, learner.zero_grads(trainer.params), trainer.ref_params, sc.batch,
                                     zeros, weights, rows, UpdateResult(None, None))
  jax.block_until_ready(learner.apply(fresh_copy(trainer.params), fresh_copy(trainer.opt_state), grads))
  return time.perf_counter() - t0


def compile_counts(trainer) -> dict:
  learner = trainer.learner
  sampler = trainer.collector.sampler  # continuous batching: one trace per program and bucket size
  compiled = sum(sampler.traces.values()) if hasattr(sampler, "traces") else sampler._fn._cache_size()
  return {"sampler": compiled, "micro_step": learner.micro_step._cache_size(),
          "apply": learner._apply._cache_size() if learner._apply is not None else 0}


def summarize(algo, steps, evaluation) -> dict:
  s = {"algo": algo, "steps": len(steps), "optimizer_updates": sum(m["optimizer_updates"] for m in steps),
       "updates_skipped": sum(m["update_skipped"] for m in steps)}
  for k in PHASES + ("step_s",):
    vals = [m[k] for m in steps]
    s[f"{k}_mean"], s[f"{k}_total"] = float(np.mean(vals)), float(np.sum(vals))
  s["total_s"] = sum(s[f"{k}_total"] for k in PHASES)
  s["sampler_calls"] = sum(m["sampler_calls"] for m in steps)
  s["micro_steps"] = sum(m["micro_steps"] for m in steps)
  if "wasted_slot_fraction" in steps[0]:  # decode slot-steps spent on rows that had ended
    s["decode_slot_steps"] = int(sum(m["decode_slot_steps"] for m in steps))
    s["wasted_slot_fraction_mean"] = float(np.mean([m["wasted_slot_fraction"] for m in steps]))
  s["kept_fraction_mean"] = float(np.mean([m["kept_fraction"] for m in steps]))
  s["reward_mean"] = float(np.mean([m["reward_mean"] for m in steps]))
  tail = steps[-max(1, len(steps) // 4):]
  s["reward_last_quarter"] = float(np.mean([m["reward_mean"] for m in tail]))
  s["accuracy"], s["accuracy_stderr"] = evaluation["accuracy"], evaluation["stderr"]
  return s


def fmt_summary(summaries, before) -> str:
  head = ["algo", "steps (updates)", "sample s/step", "reward s/step", "update s/step", "total s/step", "sample s",
          "reward s", "update s", "total s", "sampler calls", "micro-steps", "kept fraction", "train reward",
          "held-out acc"]
  rows = []
  for s in summaries:
    rows.append([s["algo"], f"{s['steps']} ({s['optimizer_updates']})", f"{s['sample_s_mean']:.2f}",
                 f"{s['reward_s_mean']:.2f}", f"{s['update_s_mean']:.2f}", f"{s['total_s'] / s['steps']:.2f}",
                 f"{s['sample_s_total']:.1f}", f"{s['reward_s_total']:.1f}", f"{s['update_s_total']:.1f}",
                 f"{s['total_s']:.1f}", str(s["sampler_calls"]), str(s["micro_steps"]),
                 f"{s['kept_fraction_mean']:.3f}", f"{s['reward_mean']:.3f}",
                 f"{s['accuracy']:.3f} +/- {s['accuracy_stderr']:.3f}"])
  rows.append(["(before training)", "", "", "", "", "", "", "", "", "", "", "", "", "",
               f"{before['accuracy']:.3f} +/- {before['stderr']:.3f}"])
  return table(head, rows)


def plot(path, per_algo, summaries, before, title):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colors = {"grpo": "tab:red", "dash": "tab:blue", "pg": "tab:green"}
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
  ax.errorbar([0], [before["accuracy"]], yerr=[before["stderr"]], fmt="ks", capsize=3, label="held-out, before")
  for s in summaries:
    a, steps = s["algo"], per_algo[s["algo"]]
    x = np.cumsum([m["step_s"] for m in steps])
    r = np.array([m["reward_mean"] for m in steps])
    c = colors.get(a) if "@" not in a else None
    ax.plot(x, r, "-", color=c, alpha=0.3, lw=1)
    k = min(4, len(r))
    smooth = np.convolve(r, np.ones(k) / k, mode="valid")
    ax.plot(x[k - 1:], smooth, "-", color=c, lw=2, label=f"{a}: train reward (mean of {k} steps)")
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


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "smollm2_arith.py"))
  ap.add_argument("--algos", default="grpo,dash,pg", help="comma list; ratios are against grpo")
  ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's train.num_steps)")
  ap.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: the config's)")
  ap.add_argument("--quick", action="store_true", help="4 steps and 64 held-out prompts, same per-step shapes")
  ap.add_argument("--out", default=None, help="folder for the three workdirs (default: a temporary folder)")
  ap.add_argument("--json", default=None, help="default benchmarks/results/dash_vs_grpo[_quick].json")
  ap.add_argument("--png", default=None, help="default: the JSON path with .png")
  args = ap.parse_args(argv)
  stem = "dash_vs_grpo_quick" if args.quick else "dash_vs_grpo"
  args.json = args.json or os.path.join(RESULTS, stem + ".json")
  args.png = args.png or os.path.splitext(args.json)[0] + ".png"
  if args.quick:
    args.steps, args.eval_prompts = args.steps or 4, args.eval_prompts or 64
  algos = [a.strip() for a in args.algos.split(",") if a.strip()]
  bad = [a for a in algos if a.partition("@")[2] not in ("", "static", "continuous")]
  if bad:
    ap.error(f"--algos: {bad[0]!r}: the sampler after '@' must be static or continuous")

  config = load_config(args.config)
  config.train.num_steps = args.steps or config.train.num_steps
  config.eval.num_prompts = args.eval_prompts or config.eval.num_prompts
  config.eval.batch_size = min(config.eval.batch_size, config.eval.num_prompts * config.eval.samples)
  config.eval.every = 0
  config.train.checkpoint_every = 0  # checkpoint writes are not part of what is compared
  out_dir = args.out or tempfile.mkdtemp(prefix="dash_vs_grpo_")
  enable_compile_cache(os.path.join(out_dir, "jax_cache"))
  env = environment()
  log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
  c = config
  settings = {"config": os.path.relpath(args.config, ROOT), "algos": algos, "steps": c.train.num_steps,
              "model": c.model.source, "prompts_per_step": c.rl.prompts_per_step, "samples_per_prompt":
              c.rl.samples_per_prompt, "max_new_tokens": c.sampling.max_new_tokens, "micro_batch_size":
              c.train.micro_batch_size, "sampling_batch_size": c.sampling.batch_size,
              "sampling_continuous": c.sampling.continuous, "learning_rate":
              c.train.learning_rate, "filter_threshold": c.rl.filter_threshold, "eval_prompts": c.eval.num_prompts,
              "eval_temperature": c.eval.temperature, "eval_samples": c.eval.samples, "quick": args.quick,
              "out": out_dir, "command": " ".join(["python"] + sys.argv)}
  log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
  t_start = time.perf_counter()
  trainers = build_trainers(config, algos, out_dir)
  result = {"environment": env, "settings": settings}
  try:
    t0 = time.perf_counter()
    before = trainers[algos[0]].evaluate()
    before = {k: v for k, v in before.items() if k != "texts"}
    log(f"held-out accuracy before training (shared): {before['accuracy']:.3f} +/- {before['stderr']:.3f} "
        f"({time.perf_counter() - t0:.0f}s)")
    result["warm_up_s"] = {a: warm_up(t) for a, t in trainers.items()}
    log("warm-up (compile + one run) seconds: " + ", ".join(f"{a} {s:.1f}" for a, s in result["warm_up_s"].items()))
    compiled = {a: compile_counts(t) for a, t in trainers.items()}
    per_algo = {a: [] for a in algos}
    for step in range(c.train.num_steps):
      order = algos[step % len(algos):] + algos[:step % len(algos)]
      for a in order:
        m = trainers[a].train_step()
        trainers[a].metrics.write(m)
        per_algo[a].append(m)
        log(f"step {step + 1:2d} {a:5s} sample {m['sample_s']:5.2f}s reward {m['reward_s']:4.2f}s update "
            f"{m['update_s']:5.2f}s step {m['step_s']:5.2f}s calls {m['sampler_calls']} micro {m['micro_steps']} "
            f"kept {m['kept_fraction']:.2f} reward {m['reward_mean']:.3f}")
    after = {}
    for a in algos:
      t0 = time.perf_counter()
      ev = trainers[a].evaluate()
      after[a] = {k: v for k, v in ev.items() if k != "texts"}
      log(f"held-out accuracy after training, {a}: {ev['accuracy']:.3f} +/- {ev['stderr']:.3f} "
          f"({time.perf_counter() - t0:.0f}s)")
    recompiled = {a: compile_counts(t) != compiled[a] for a, t in trainers.items()}
  finally:
    for t in trainers.values():
      t.close()
  summaries = [summarize(a, per_algo[a], after[a]) for a in algos]
  by = {s["algo"]: s for s in summaries}
  ratios = {}
  if "grpo" in by:
    for a in algos:
      if a != "grpo":
        ratios[f"{a}_over_grpo"] = by[a]["total_s"] / by["grpo"]["total_s"]
        for k in PHASES:
          ratios[f"{a}_over_grpo_{k[:-2]}"] = by[a][f"{k}_total"] / by["grpo"][f"{k}_total"]
  result.update(before=before, after=after, summary=summaries, ratios=ratios, steps=per_algo,
                compilations=compiled, recompiled_during_training=recompiled, wall_s=time.perf_counter() - t_start,
                load_average_end=os.getloadavg())
  title = (f"{c.model.source}, P={c.rl.prompts_per_step} x G={c.rl.samples_per_prompt}, "
           f"{c.sampling.max_new_tokens} new tokens, {c.train.num_steps} steps, interleaved ({env['nproc']} CPUs)")
  plot(args.png, per_algo, summaries, before, title)
  result["png"] = args.png
  write_json(args.json, result)

  log("")
  log(f"DASH vs GRPO vs PG: {title}; jax {env['jax']}, {env['cpu_model']}.")
  log("Seconds per step are means over the training steps; totals are sums; total = sample + reward + update. "
      f"Held-out accuracy: mean@{c.eval.samples}, temperature {c.eval.temperature}, {c.eval.num_prompts} prompts "
      "(+/- standard error).")
  log("")
  log(fmt_summary(summaries, before))
  log("")
  for k, v in ratios.items():
    log(f"{k} = {v:.3f}")
  for a in algos:
    log(f"{a}: compilations sampler/micro_step/apply = {compiled[a]['sampler']}/{compiled[a]['micro_step']}/"
        f"{compiled[a]['apply']}, recompiled during training: {recompiled[a]}")
  log(f"wall time {result['wall_s']:.0f}s; load average start {env['load_average_start']}, end "
      f"{result['load_average_end']}; JSON: {args.json}; PNG: {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
