"""Where the time of a training step goes on this machine: sampler and learner costs at the main job's shapes.

  python benchmarks/profile_phases.py            # SmolLM2-135M-Instruct, ~12 min on 2 CPU cores
  python benchmarks/profile_phases.py --quick    # 2 repeats, no micro-batch 8 (~6 min)

Sections (every timed call waits for its result; variants are called alternately, medians reported):
  1. peak: an in-process 2048^3 float32 matmul and a 540 MB streaming pass (the machine's compute and memory limits).
  2. sampler: one call at B = 4, 8, 16, 32 rows (B/4 prompts x 4 samples, 56-token prompts, 32 new tokens, no EOS
     so every call decodes the full length); a fit time = fixed + per_row * B separates the per-call cost (paid
     once per call: prefill of a prompt and streaming all weights once per decode step) from the per-row cost.
     GRPO makes R / 4 calls of 4 rows per update, DASH one of R rows.
  3. learner micro-step (forward + backward + accumulate) at micro-batch 2, 4, 8: per micro-step and per row,
     with achieved GFLOP/s from the model's matmul FLOPs; then, at micro-batch 4 (one group), the per-row learner
     against prompt sharing (`train.share_prompts`: each prompt run once per group), with their gradients compared.
  4. per-op split of one micro-step (micro-batch 4) and of one sampler call (B = 4 and 32) from a jax.profiler
     trace: matmul fusions, vocabulary-sized ops (LM head, log-softmax, token draw), other element-wise ops and
     copies, forward vs backward.
  5. per-update fixed costs: the zeroed accumulator, the AdamW step, a gradient-tree add.
  6. host sync: reading each micro-step's stats with float() (a wait per micro-step) against reading them all
     after the last micro-step, as `Updater.accumulate` does.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, environment, log, table, write_json  # noqa: E402

PROMPT_LEN, REAL_PROMPT, NEW_TOKENS, G = 56, 48, 32, 4


def interleaved(fns: dict, repeats: int) -> dict:
  """Median seconds per variant; each is called once untimed first, then in alternating order."""
  for f in fns.values():
    jax.block_until_ready(f())
  times = {k: [] for k in fns}
  for r in range(repeats):
    for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      t0 = time.perf_counter()
      jax.block_until_ready(fns[k]())
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def op_times(jitted, args, repeats=2):
  """{hlo op name: mean ns per call} and {name: (shape text, jax op_name)} from a profiler trace."""
  from jax.profiler import ProfileData

  text = jitted.lower(*args).compile().as_text()
  index = {}
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", line)
    if m:
      meta = re.search(r'op_name="([^"]*)"', m.group(2))
      index[m.group(1)] = (m.group(2)[:200], meta.group(1) if meta else "")
  jax.block_until_ready(jitted(*args))
  d = tempfile.mkdtemp(prefix="trace_")
  with jax.profiler.trace(d):
    for _ in range(repeats):
      jax.block_until_ready(jitted(*args))
  data = ProfileData.from_file(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
  tot = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for e in line.events:
        name = dict(e.stats).get("hlo_op")
        if name:
          tot[name] += e.duration_ns / repeats
  return tot, index


def split_ops(tot, index, vocab, loop_phase=False) -> dict:
  """Shares of op time by (phase, kind); vocabulary-sized = output shape holds V (or V as blocks x 256)."""
  vocab_shapes = (f"{vocab}]", f"{vocab},", f"{vocab // 256},256")
  shares = collections.Counter()
  total = sum(tot.values())
  for name, ns in tot.items():
    shape, meta = index.get(name, ("", ""))
    head = shape.split("=")[0] if "=" in shape else shape.split("(")[0]
    if loop_phase:
      phase = "decode loop" if "while" in meta else "prefill"
    else:
      phase = "backward" if "transpose(" in meta else "forward"
    if any(v in head for v in vocab_shapes):
      kind = "vocabulary-sized (LM head, softmax, draw)"
    elif name.startswith(("ynn_fusion", "dot")):
      kind = "matmul fusions (body)"
    elif name.startswith(("copy", "transpose")):
      kind = "copies / transposes"
    else:
      kind = "other element-wise, reductions"
    shares[(phase, kind)] += ns / total
  return dict(shares)


def matmul_flops(cfg, tokens, head_tokens):
  """Forward FLOPs of the dense layers (attention score/value einsums excluded: < 3% at these lengths)."""
  d, f, h, kv, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer = d * h * hd * 2 + d * kv * hd * 2 + 3 * d * f
  return 2 * tokens * per_layer * cfg.num_layers + 2 * head_tokens * d * cfg.vocab_size


def fake_batch(M, vocab, rng):
  S = PROMPT_LEN + NEW_TOKENS
  valid = np.ones((M, S), bool)
  valid[:, :PROMPT_LEN - REAL_PROMPT] = False
  valid[:, PROMPT_LEN + 25:] = False  # ~25 generated tokens, as in the main job
  w = np.zeros((M, NEW_TOKENS), np.float32)
  w[:, :25] = 1.0 / (NEW_TOKENS * 32)
  return {"tokens": jnp.asarray(rng.integers(0, vocab, (M, S)), jnp.int32), "valid": jnp.asarray(valid),
          "weights": jnp.asarray(w), "adv": jnp.ones((M,), jnp.float32), "row_mask": jnp.ones((M,), bool),
          "old_logprobs": jnp.zeros((M, NEW_TOKENS), jnp.float32)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--repeats", type=int, default=4)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--json", default=None, help="default benchmarks/results/profile_phases[_quick].json")
  args = ap.parse_args(argv)
  if args.quick:
    args.repeats = 2
  args.json = args.json or os.path.join(RESULTS, "profile_phases" + ("_quick" if args.quick else "") + ".json")
  from flax import nnx

  from dashjax.models.loading import load_model
  from dashjax.parallel.mesh import make_mesh
  from dashjax.rl.batching import RolloutBatch
  from dashjax.sampling.sampler import Sampler, SamplingConfig
  from dashjax.train.learner import Learner, LossConfig, make_optimizer
  from dashjax.rl.batching import Part
  from dashjax.train.update import Updater, UpdateResult

  env = environment()
  log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
  t_start = time.perf_counter()
  out = {"environment": env, "settings": vars(args)}
  model, _ = load_model("smollm2-135m-instruct")
  cfg, V = model.cfg, model.cfg.vocab_size
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(0)
  reps = args.repeats

  # 1. machine limits
  a = jnp.ones((2048, 2048), jnp.float32)
  big = jnp.ones((135_000_000,), jnp.float32)
  mm, rd = jax.jit(lambda a: a @ a), jax.jit(jnp.sum)
  peak = interleaved({"matmul": lambda: mm(a), "stream": lambda: rd(big)}, reps)
  out["peak"] = {"matmul_gflops": 2 * 2048**3 / peak["matmul"] / 1e9, "stream_gb_s": big.nbytes / peak["stream"] / 1e9}
  del big
  log(f"peak: {out['peak']['matmul_gflops']:.0f} GFLOP/s float32 matmul, {out['peak']['stream_gb_s']:.1f} GB/s read")

  # 2. sampler call cost against rows per call
  scfg = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=1.0, samples_per_prompt=G, eos_ids=(), pad_id=0)
  sampler = Sampler(graphdef, scfg)
  calls, inputs = {}, {}
  for B in (4, 8, 16, 32):
    P = B // G
    valid = np.zeros((P, PROMPT_LEN), bool)
    valid[:, PROMPT_LEN - REAL_PROMPT:] = True
    inputs[B] = (params, jnp.asarray(rng.integers(0, V, (P, PROMPT_LEN)), jnp.int32), jnp.asarray(valid),
                 jax.random.key(B))
    calls[B] = functools.partial(lambda B: sampler(*inputs[B]).tokens_BxN, B)
  st = interleaved(calls, reps)
  Bs = sorted(st)
  fixed, per_row = np.polyfit(Bs, [st[b] for b in Bs], 1)[::-1]
  out["sampler"] = {"seconds_per_call": {str(b): st[b] for b in Bs}, "fit_fixed_s": fixed, "fit_per_row_s": per_row,
                    "grpo_over_dash_sampling": 8 * st[4] / st[32]}
  rows = [[str(b), f"{st[b]:.2f}", f"{1e3 * st[b] / b:.0f}", f"{32 // b}", f"{st[b] * 32 / b:.2f}"] for b in Bs]
  sampler_table = table(["rows per call", "s per call", "ms per row", "calls per 32 rows", "s per 32 rows"], rows)
  log(sampler_table)

  # 3. learner micro-step against micro-batch size
  learner = Learner(graphdef, make_optimizer(3e-5, 24), LossConfig(temperature=1.0), PROMPT_LEN)
  sizes = (2, 4) if args.quick else (2, 4, 8)
  batches = {M: fake_batch(M, V, rng) for M in sizes}
  acc = {M: learner.zero_grads(params) for M in sizes}

  def micro(M):
    acc[M], stats = learner.micro_step(params, acc[M], None, batches[M])
    return acc[M]

  mt = interleaved({M: functools.partial(micro, M) for M in sizes}, reps)
  S = PROMPT_LEN + NEW_TOKENS - 1
  out["micro_step"] = {}
  rows = []
  for M in sizes:
    flops = 3 * matmul_flops(cfg, M * S, M * NEW_TOKENS)
    out["micro_step"][str(M)] = {"seconds": mt[M], "per_row_s": mt[M] / M, "gflops": flops / mt[M] / 1e9}
    rows.append([str(M), f"{mt[M]:.2f}", f"{mt[M] / M:.3f}", f"{32 / M:.0f}", f"{mt[M] * 32 / M:.1f}",
                 f"{flops / 1e9:.0f}", f"{flops / mt[M] / 1e9:.0f}"])
  micro_table = table(["micro-batch", "s per micro-step", "s per row", "micro-steps per 32 rows", "s per 32 rows",
                       "GFLOP", "GFLOP/s"], rows)
  log(micro_table)

  # 3b. prompt sharing in backprop: one group of G rows per micro-batch, prompt run once vs once per row
  mbg = dict(batches[4])
  mbg["tokens"] = mbg["tokens"].at[:, :PROMPT_LEN].set(mbg["tokens"][:1, :PROMPT_LEN])  # rows of a group share it
  shared = Learner(graphdef, learner.optimizer, learner.loss_cfg, PROMPT_LEN, prompt_group=G)
  variants = {"per row": learner, "shared prompt": shared}
  gacc = {k: v.zero_grads(params) for k, v in variants.items()}

  def grouped(name):
    gacc[name], _ = variants[name].micro_step(params, gacc[name], None, mbg)
    return gacc[name]

  once = {k: v.micro_step(params, v.zero_grads(params), None, mbg)[0] for k, v in variants.items()}
  diff = max(float(jnp.abs(a - b).max() / (jnp.abs(a).max() + 1e-30))
             for a, b in zip(jax.tree.leaves(once["per row"]), jax.tree.leaves(once["shared prompt"])))
  del once
  gt = interleaved({k: functools.partial(grouped, k) for k in variants}, reps)
  out["prompt_sharing"] = {"seconds": gt, "shared_over_per_row": gt["shared prompt"] / gt["per row"],
                           "grad_max_rel_diff": diff, "rows_per_micro_step": 4, "group": G}
  log(table(["micro-batch 4 = 1 group", "s per micro-step", "ratio"],
            [[k, f"{v:.2f}", f"{v / gt['per row']:.3f}"] for k, v in gt.items()]))
  log(f"gradient max relative difference, shared vs per row: {diff:.1e}")

  # 4. per-op splits
  splits = {}
  mb4 = batches[4]
  undonated = jax.jit(lambda p, g, mb: learner.micro_step(p, g, None, mb))  # the trace calls it twice
  tot, index = op_times(undonated, (params, learner.zero_grads(params), mb4))
  splits["micro_step (micro-batch 4)"] = (split_ops(tot, index, V), mt[4])
  for B in (4, 32):
    tot, index = op_times(sampler.program, inputs[B])
    splits[f"sampler call (B = {B})"] = (split_ops(tot, index, V, loop_phase=True), st[B])
  out["op_split"] = {}
  for what, (shares, secs) in splits.items():
    out["op_split"][what] = {f"{p}: {k}": v for (p, k), v in shares.items()}
    rows = [[p, k, f"{100 * v:.1f}%", f"{v * secs:.2f}"] for (p, k), v in sorted(shares.items(), key=lambda x: -x[1])
            if v >= 0.005]
    log(f"\n{what}: {secs:.2f}s")
    log(table(["phase", "ops", "share of op time", "~ seconds"], rows))

  # 5. per-update fixed costs
  grads = learner.zero_grads(params)
  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)
  holder = {"acc": learner.zero_grads(params), "p": jax.tree.map(jnp.copy, params)}
  holder["o"] = jax.jit(learner.optimizer.init)(holder["p"])

  def apply():
    holder["p"], holder["o"], _ = learner.apply(holder["p"], holder["o"], grads)
    return holder["p"]

  def accumulate():
    holder["acc"] = add(holder["acc"], grads)
    return holder["acc"]

  fx = interleaved({"zeroed accumulator (fresh 540 MB)": lambda: learner.zero_grads(params),
                    "AdamW step (apply)": apply, "gradient-tree add (in place)": accumulate}, reps + 2)
  out["fixed_costs_s"] = fx
  log("\n" + table(["per-update cost", "seconds"], [[k, f"{v:.3f}"] for k, v in fx.items()]))

  # 6. host sync per micro-step
  R = 32
  S1 = PROMPT_LEN + NEW_TOKENS
  valid = np.ones((R, S1), bool)
  valid[:, :PROMPT_LEN - REAL_PROMPT] = False
  batch = RolloutBatch(rng.integers(0, V, (R, S1)).astype(np.int32), valid, np.ones((R, NEW_TOKENS), np.float32),
                       np.zeros((R, NEW_TOKENS), np.float32), PROMPT_LEN)
  mesh = make_mesh((1, 1, 1))
  updater = Updater(learner, mesh, 4, "constant_length", "sampled")
  all_rows = np.arange(R)
  part = Part(batch, np.ones(R, np.float32), all_rows, all_rows)

  from dashjax.parallel.distributed import put
  from dashjax.parallel.mesh import batch_sharding

  def run_micro_steps(read_each: bool):
    mbs = updater.micro_batches(part)
    g, kept, result = learner.zero_grads(params), [], UpdateResult()
    for i in range(mbs.num_micro):
      g, stats = learner.micro_step(params, g, None, {k: put(v, batch_sharding(mesh, v.ndim))
                                                      for k, v in mbs[i].items()})
      if read_each:
        result.add_stats(stats)  # float(): waits for this micro-step before the next is dispatched
      else:
        kept.append(stats)
    for stats in kept:
      result.add_stats(stats)
    return g

  def updater_accumulate():  # what the trainer runs
    return updater.gradient(params, None, [part], UpdateResult())

  hs = interleaved({"float() after every micro-step": functools.partial(run_micro_steps, True),
                    "read after the last one": functools.partial(run_micro_steps, False),
                    "Updater.gradient (dashjax)": updater_accumulate},
                   2 if args.quick else 3)
  out["host_sync_s"] = hs
  log("\n" + table(["8 micro-steps, stats read", "seconds"], [[k, f"{v:.2f}"] for k, v in hs.items()]))

  out["wall_s"] = time.perf_counter() - t_start
  out["load_average_end"] = os.getloadavg()
  write_json(args.json, out)
  log(f"\nwall time {out['wall_s']:.0f}s; load average start {env['load_average_start']}, end "
      f"{out['load_average_end']}; JSON: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
