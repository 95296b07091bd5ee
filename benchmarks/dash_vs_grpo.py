"""DASH against the paper's GRPO baseline and PG (preemptive sampling without filtering), steps interleaved.

  python benchmarks/dash_vs_grpo.py --quick     # SmolLM2, 4 steps, 64 held-out prompts (~7 min on 2 CPU cores)
  python benchmarks/dash_vs_grpo.py             # the main job's settings: 24 steps, 200 held-out prompts (~35 min)
  python benchmarks/dash_vs_grpo.py --algos grpo,dash,dash@continuous   # dash with both samplers side by side
  python benchmarks/dash_vs_grpo.py --seeds 3   # each algorithm at seeds 0, 1, 2: accuracy mean and sd over seeds
  python benchmarks/dash_vs_grpo.py --workload long --algos grpo,dash   # 256-token chains of thought: time per phase

One Trainer per algorithm from the same config (configs/smollm2_arith.py by default), differing only in `rl.algo`:
same initial weights, prompts (same data seed and order), P, G, max new tokens, micro-batch, learning rate and number
of optimizer updates. A label `ALGO@static` or `ALGO@continuous` also sets `sampling.continuous` for that trainer. Their `train_step()` calls alternate round-robin, the order rotating every step, so drift in
machine load hits all three alike. Compilation is excluded: before step 1 each Trainer's sampler, micro-step and
optimizer step are compiled and run once on throwaway inputs (its model copy is untouched), and the jit caches are
checked afterwards to show that training compiled nothing more. Held-out accuracy is measured once before training
(all start from the same weights) and for each algorithm at the end, with the config's evaluation (greedy by
default) on the same prompts.

Total time per algorithm = sample + reward + update seconds summed over the training steps; `dash_over_grpo` and
`pg_over_grpo` are ratios of those totals. With `--seeds N` the whole comparison runs once per seed (train.seed and
data.seed both set to it; the held-out set is drawn from data.seed too), and the JSON, rewritten after every seed,
adds an `aggregate`: accuracy mean, sd and per seed, ratios per seed, per-step response length and truncation.
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
                    write_json)
from dash_vs_grpo_report import (PHASES, aggregate, fmt_seeds, fmt_summary, plot_one, plot_seeds,  # noqa: E402
                                 ratios_of, summarize)


def build_trainers(config, algos, out_dir, loaded):
  from flax import nnx

  from dashjax.train.trainer import Trainer

  graphdef, state, tokenizer = loaded
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
  from dashjax.rl.batching import Part
  from dashjax.train.update import UpdateResult

  t0 = time.perf_counter()
  examples = trainer.train_examples[:trainer.collector.prompts_per_call]  # not the iterator: data order unchanged
  sc = trainer.collector.collect(trainer.sampler_params(), examples, jax.random.key(2**31 - 1))
  rows = np.arange(trainer.plan.micro_batch_size)
  zeros = np.zeros(sc.batch.num_rows, np.float32)  # advantage 0: a zero gradient, the programs compiled all the same
  grads = trainer.updater.gradient(trainer.params, trainer.ref_params, [Part(sc.batch, zeros, rows, rows)],
                                   UpdateResult())
  jax.block_until_ready(trainer.learner.apply(fresh_copy(trainer.params), fresh_copy(trainer.opt_state), grads))
  return time.perf_counter() - t0


def compile_counts(trainer) -> dict:
  learner = trainer.learner
  sampler = trainer.collector.sampler  # continuous batching: one trace per program and bucket size
  compiled = sum(sampler.traces.values()) if hasattr(sampler, "traces") else sampler.program._cache_size()
  return {"sampler": compiled, **learner.compile_counts()}


def run_seed(config, algos, out_dir, loaded, seed: int, evaluate: bool, untimed: int = 0) -> dict:
  """One round of the compared Trainers at `seed` (train.seed and data.seed), steps interleaved."""
  c = copy.deepcopy(config)
  c.train.seed = c.data.seed = seed
  trainers = build_trainers(c, algos, os.path.join(out_dir, f"seed{seed}"), loaded)
  run = {"seed": seed}
  try:
    before = None
    if evaluate:
      t0 = time.perf_counter()
      before = {k: v for k, v in trainers[algos[0]].evaluate().items() if k != "texts"}
      log(f"seed {seed}: held-out accuracy before training (shared): {before['accuracy']:.3f} +/- "
          f"{before['stderr']:.3f} ({time.perf_counter() - t0:.0f}s)")
    run["warm_up_s"] = {a: warm_up(t) for a, t in trainers.items()}
    log(f"seed {seed}: warm-up (compile + one run) seconds: " +
        ", ".join(f"{a} {s:.1f}" for a, s in run["warm_up_s"].items()))
    compiled = {a: compile_counts(t) for a, t in trainers.items()}
    per_algo = {a: [] for a in algos}
    for step in range(c.train.num_steps):
      order = algos[step % len(algos):] + algos[:step % len(algos)]
      for a in order:
        m = trainers[a].train_step()
        trainers[a].metrics.write(m)
        per_algo[a].append(m)
        log(f"seed {seed} step {step + 1:2d} {a:5s} sample {m['sample_s']:5.2f}s reward {m['reward_s']:4.2f}s update "
            f"{m['update_s']:5.2f}s step {m['step_s']:5.2f}s calls {m['sampler_calls']} micro {m['micro_steps']} "
            f"kept {m['kept_fraction']:.2f} reward {m['reward_mean']:.3f} len {m['response_len']:.1f} "
            f"trunc {m['truncated_fraction']:.2f}")
    after = {}
    if evaluate:
      for a in algos:
        t0 = time.perf_counter()
        ev = trainers[a].evaluate()
        after[a] = {k: v for k, v in ev.items() if k != "texts"}
        log(f"seed {seed}: held-out accuracy after training, {a}: {ev['accuracy']:.3f} +/- {ev['stderr']:.3f} "
            f"({time.perf_counter() - t0:.0f}s)")
    recompiled = {a: compile_counts(t) != compiled[a] for a, t in trainers.items()}
  finally:
    for t in trainers.values():
      t.close()
  # The first `untimed` steps train but are left out of the timing summary (late compilations of sampler buckets).
  summaries = [dict(summarize(a, per_algo[a][untimed:], after.get(a)), untimed_steps=untimed) for a in algos]
  run.update(before=before, after=after, summary=summaries, ratios=ratios_of(summaries), steps=per_algo,
             compilations=compiled, recompiled_during_training=recompiled)
  return run


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=None, help="default configs/smollm2_arith.py (--workload long: "
                  "configs/gsm_long.py)")
  ap.add_argument("--workload", choices=("main", "long"), default="main",
                  help="long: gsm_symbolic with chain of thought, 256 new tokens, continuous sampler; 4 steps, no "
                  "held-out evaluation, the first step untimed, unless --steps / --eval-prompts / --untimed-steps say "
                  "otherwise (time per update is the point)")
  ap.add_argument("--algos", default="grpo,dash,pg", help="comma list; ratios are against grpo")
  ap.add_argument("--seeds", type=int, default=1, help="runs of every algorithm at seeds S0..S0+N-1 (train.seed and "
                  "data.seed both set); accuracy is reported as mean and sd over seeds")
  ap.add_argument("--first-seed", type=int, default=None, help="S0 (default: the config's train.seed)")
  ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's train.num_steps)")
  ap.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: the config's; 0: none)")
  ap.add_argument("--untimed-steps", type=int, default=None, help="first steps left out of the time totals "
                  "(default 0; --workload long: 1)")
  ap.add_argument("--quick", action="store_true", help="4 steps and 64 held-out prompts, same per-step shapes")
  ap.add_argument("--out", default=None, help="folder for the workdirs (default: a temporary folder)")
  ap.add_argument("--json", default=None, help="default benchmarks/results/dash_vs_grpo[_quick|_long|_seeds].json")
  ap.add_argument("--png", default=None, help="default: the JSON path with .png")
  args = ap.parse_args(argv)
  long = args.workload == "long"
  args.config = args.config or os.path.join(ROOT, "configs", "gsm_long.py" if long else "smollm2_arith.py")
  stem = "dash_vs_grpo" + ("_quick" if args.quick else "") + ("_long" if long else "") + (
      "_seeds" if args.seeds > 1 else "")
  args.json = args.json or os.path.join(RESULTS, stem + ".json")
  args.png = args.png or os.path.splitext(args.json)[0] + ".png"
  if args.quick:
    args.steps, args.eval_prompts = args.steps or 4, 64 if args.eval_prompts is None else args.eval_prompts
  if long:
    args.steps, args.eval_prompts = args.steps or 4, 0 if args.eval_prompts is None else args.eval_prompts
  untimed = (1 if long else 0) if args.untimed_steps is None else args.untimed_steps
  algos = [a.strip() for a in args.algos.split(",") if a.strip()]
  bad = [a for a in algos if a.partition("@")[2] not in ("", "static", "continuous")]
  if bad:
    ap.error(f"--algos: {bad[0]!r}: the sampler after '@' must be static or continuous")

  config = load_config(args.config)
  config.train.num_steps = args.steps or config.train.num_steps
  evaluate = args.eval_prompts != 0
  config.eval.num_prompts = args.eval_prompts or config.eval.num_prompts
  config.eval.batch_size = min(config.eval.batch_size, config.eval.num_prompts * config.eval.samples)
  config.eval.every = 0
  config.train.checkpoint_every = 0  # checkpoint writes are not part of what is compared
  first = config.train.seed if args.first_seed is None else args.first_seed
  seeds = list(range(first, first + args.seeds))
  out_dir = args.out or tempfile.mkdtemp(prefix="dash_vs_grpo_")
  enable_compile_cache(os.path.join(out_dir, "jax_cache"))
  env = environment()
  log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
  c = config
  settings = {"config": os.path.relpath(args.config, ROOT), "workload": args.workload, "algos": algos,
              "seeds": seeds, "steps": c.train.num_steps, "model": c.model.source, "task": c.data.task,
              "prompts_per_step": c.rl.prompts_per_step, "samples_per_prompt": c.rl.samples_per_prompt,
              "max_new_tokens": c.sampling.max_new_tokens, "micro_batch_size": c.train.micro_batch_size,
              "sampling_batch_size": c.sampling.batch_size, "sampling_continuous": c.sampling.continuous,
              "learning_rate": c.train.learning_rate, "filter_threshold": c.rl.filter_threshold,
              "loss_aggregation": c.rl.loss_aggregation, "eval_prompts": c.eval.num_prompts if evaluate else 0,
              "eval_temperature": c.eval.temperature, "eval_samples": c.eval.samples, "quick": args.quick,
              "untimed_steps": untimed, "out": out_dir, "command": " ".join(["python"] + sys.argv)}
  log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
  t_start = time.perf_counter()
  from flax import nnx

  from dashjax.models.loading import load_model

  model, tokenizer = load_model(config.model.source, dtype=config.model.dtype)
  graphdef, state = nnx.split(model)
  loaded = (graphdef, state, tokenizer)
  title = (f"{c.model.source}, {c.data.task}, P={c.rl.prompts_per_step} x G={c.rl.samples_per_prompt}, "
           f"{c.sampling.max_new_tokens} new tokens, {c.train.num_steps} steps, interleaved ({env['nproc']} CPUs)")
  runs = []
  result = {"environment": env, "settings": settings, "runs": runs}
  for seed in seeds:
    runs.append(run_seed(config, algos, out_dir, loaded, seed, evaluate, untimed))
    # Written after every seed, so a long run that is stopped leaves its finished seeds behind.
    result.update(aggregate=aggregate(runs, algos), wall_s=time.perf_counter() - t_start,
                  load_average_end=os.getloadavg(), seeds_done=[r["seed"] for r in runs], png=args.png)
    if len(seeds) == 1:  # the single-seed layout of earlier runs, kept for readers of those JSONs
      r = runs[0]
      result.update({k: r[k] for k in ("before", "after", "summary", "ratios", "steps", "compilations",
                                       "recompiled_during_training", "warm_up_s")})
      plot_one(args.png, r["steps"], r["summary"], r["before"], title)
    else:
      plot_seeds(args.png, runs, algos, title + f", seeds {seeds}")
    write_json(args.json, result)
    log(f"seed {seed} done; {len(runs)} of {len(seeds)} seeds written to {args.json}")

  log("")
  log(f"DASH vs GRPO vs PG: {title}; jax {env['jax']}, {env['cpu_model']}.")
  log("Seconds per step are means over the training steps; totals are sums; total = sample + reward + update. "
      f"Held-out accuracy: mean@{c.eval.samples}, temperature {c.eval.temperature}, {c.eval.num_prompts} prompts "
      "(+/- standard error).")
  for r in runs:
    log("")
    log(f"seed {r['seed']}:")
    log(fmt_summary(r["summary"], r["before"]))
    for k, v in r["ratios"].items():
      log(f"  {k} = {v:.3f}")
    for s in r["summary"]:
      waste = (f", wasted slot-steps {s['wasted_slot_steps']} of {s['decode_slot_steps']} "
               f"({s['wasted_slot_fraction']:.3f})" if "wasted_slot_steps" in s else "")
      log(f"  {s['algo']}: share of time sampling {s['sample_share']:.3f}{waste}")
    for a in algos:
      cc = r["compilations"][a]
      log(f"  {a}: compilations sampler/micro_step/apply = {cc['sampler']}/{cc['micro_step']}/{cc['apply']}, "
          f"recompiled during training: {r['recompiled_during_training'][a]}")
  if len(runs) > 1 and evaluate:
    log("")
    log(f"over seeds {seeds}:")
    log(fmt_seeds(result["aggregate"]))
  log(f"wall time {result['wall_s']:.0f}s; load average start {env['load_average_start']}, end "
      f"{result['load_average_end']}; JSON: {args.json}; PNG: {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
