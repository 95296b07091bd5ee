"""Sampler throughput: tokens/s, ms per decode step and per-sample cost, with and without prefix sharing.

  python benchmarks/sampler_throughput.py --quick                  # tiny model, ~1 minute
  python benchmarks/sampler_throughput.py --models tiny,smollm2    # the full grid

Every configuration decodes a fixed amount of work: no EOS ids, so each of the B rows generates exactly
--new-tokens tokens (the loop never stops early). Sampling is the default RL setting: temperature 1.0 over the full
vocabulary (no top-k / top-p). With G samples per prompt (G=4; G=1 at B=1) there are P = B / G prompts.

Timing: the first call (trace + compile + one run) is reported separately; the steady-state time is the median of
--repeats calls, each ended by jax.block_until_ready. The shared and unshared samplers of one B are called
alternately (ABBA order) so machine-load drift hits both alike; the speedup is median(unshared) / median(shared).
With --prefill-split the prompt forward alone is also timed (a separate jit of the same model.prefill call the
sampler makes) so the decode-loop cost per step can be separated out: (total - prefill) / decode steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dashjax.models.config import ModelConfig
from dashjax.models.transformer import Transformer
from dashjax.sampling.sampler import Sampler, SamplingConfig

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sampler_throughput.json")
QUICK_JSON = DEFAULT_JSON.replace(".json", "_quick.json")

TINY_CFG = ModelConfig(model_type="llama", vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=1024)

# Chat-templated, these land at 55-64 tokens with SmolLM2's default system prompt, so prompts pad to T=64.
QUESTIONS = [
    "A shop sells {a} boxes with {b} pencils each and then {c} more pencils. How many pencils in total? "
    "Answer with a number.",
    "Compute {a} + {b} - {c}. Show your reasoning briefly, then give the final answer as a single number.",
    "Tom has {a} apples, buys {b} bags of {c} apples each, then eats 3. How many apples does he have now?",
    "What is {a} times {b}, plus {c}? Work it out step by step and put the final answer on the last line.",
]


def log(*args):
  print(*args, flush=True)


def environment():
  dev = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
      "flax": __import__("flax").__version__,
      "backend": jax.default_backend(),
      "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
      "num_devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "python": platform.python_version(),
      "platform": platform.platform(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def load(name):
  """-> (model, prompt_fn) where prompt_fn(P, seed) gives left-padded (tokens, valid) numpy arrays."""
  if name == "tiny":
    model = Transformer(TINY_CFG, rngs=nnx.Rngs(0))

    def prompts(P, seed, T=64):
      rng = np.random.default_rng(seed)
      # Random token ids; every prompt is a full 64 tokens (no padding), like a bucketed real batch.
      return rng.integers(1, TINY_CFG.vocab_size, (P, T), dtype=np.int32), np.ones((P, T), bool)

    return model, prompts
  if name == "smollm2":
    import dashjax
    from dashjax.sampling.generate import encode_prompts

    model, tokenizer = dashjax.load_model("smollm2-135m-instruct")

    def prompts(P, seed):
      rng = np.random.default_rng(seed)
      qs = [QUESTIONS[i % len(QUESTIONS)].format(a=rng.integers(10, 99), b=rng.integers(10, 99),
                                                    c=rng.integers(10, 99)) for i in range(P)]
      return encode_prompts(tokenizer, qs, chat=True)

    return model, prompts
  raise ValueError(f"unknown model {name!r}; use tiny or smollm2")


def kv_bytes(cfg: ModelConfig, rows_prompt, T, B, N, itemsize=4):
  """Prompt cache (one entry per prefilled row) plus the per-row cache of generated tokens."""
  per_pos = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * itemsize
  return per_pos * (rows_prompt * T + B * N)


def timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0, out


def _prefill_only(graphdef, G, share, params, tokens, valid):
  # The exact prompt forward the sampler runs; returning the cache keeps XLA from pruning any of it.
  model = nnx.merge(graphdef, params)
  if not share:
    tokens, valid = jnp.repeat(tokens, G, axis=0), jnp.repeat(valid, G, axis=0)
  return model.prefill(tokens, valid)


def bench_batch(name, model, prompt_fn, B, args):
  G = 1 if B == 1 else args.samples_per_prompt
  if B % G:
    raise ValueError(f"B={B} is not a multiple of G={G}")
  P, N = B // G, args.new_tokens
  graphdef, params = nnx.split(model)
  tokens, valid = prompt_fn(P, seed=B)
  tokens, valid = jax.device_put(tokens), jax.device_put(valid)
  T = tokens.shape[1]
  modes = (True, False)
  samplers, prefills = {}, {}
  for share in modes:
    cfg = SamplingConfig(max_new_tokens=N, temperature=1.0, samples_per_prompt=G, share_prefix=share, eos_ids=(),
                         pad_id=0)
    samplers[share] = Sampler(graphdef, cfg)
    prefills[share] = jax.jit(functools.partial(_prefill_only, graphdef, G, share))

  res = {share: dict(model=name, B=B, P=P, G=G, share_prefix=share, prompt_len=T,
                     mean_prompt_tokens=float(np.asarray(valid).sum(1).mean()), new_tokens=N,
                     kv_cache_mb=kv_bytes(model.cfg, P if share else B, T, B, N) / 2**20, times_s=[],
                     prefill_times_s=[]) for share in modes}
  # First calls: trace + compile + one run.
  for share in modes:
    dt, out = timed(samplers[share], params, tokens, valid, jax.random.key(0))
    steps, lengths = int(out.decode_steps), np.asarray(out.lengths_B)
    if steps != N - 1 or not (lengths == N).all():  # no EOS: every row must run the full length
      raise RuntimeError(f"expected {N - 1} decode steps and length {N}, got {steps}, {lengths.min()}")
    res[share].update(first_call_s=dt, decode_steps=steps)
    if args.prefill_split:
      res[share]["prefill_first_call_s"] = timed(prefills[share], params, tokens, valid)[0]
  # Steady state, interleaved ABBA so slow drift in machine load affects both modes equally.
  for r in range(args.repeats):
    order = modes if r % 2 == 0 else modes[::-1]
    for share in order:
      dt, _ = timed(samplers[share], params, tokens, valid, jax.random.key(r + 1))
      res[share]["times_s"].append(dt)
    if args.prefill_split:
      for share in order:
        res[share]["prefill_times_s"].append(timed(prefills[share], params, tokens, valid)[0])
  for share in modes:
    d = res[share]
    t = statistics.median(d["times_s"])
    d.update(median_s=t, tokens_per_s=B * N / t, ms_per_step=1e3 * t / N, ms_per_sample=1e3 * t / B,
             compile_s_est=d["first_call_s"] - t)
    if args.prefill_split:
      pf = statistics.median(d["prefill_times_s"])
      d.update(prefill_ms=1e3 * pf, decode_ms_per_step=1e3 * (t - pf) / max(d["decode_steps"], 1))
  speedup = res[False]["median_s"] / res[True]["median_s"]
  for share in modes:
    res[share]["share_speedup"] = speedup
    res[share]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return [res[True], res[False]]


def fmt_table(rows, prefill_split):
  head = ["model", "B", "P x G", "share", "first call s", "median s", "tok/s", "ms/step"]
  if prefill_split:
    head += ["prefill ms", "decode ms/step"]
  head += ["ms/sample", "share speedup", "KV MB"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  for d in rows:
    cells = [d["model"], str(d["B"]), f"{d['P']} x {d['G']}", "yes" if d["share_prefix"] else "no",
             f"{d['first_call_s']:.2f}", f"{d['median_s']:.3f}", f"{d['tokens_per_s']:.0f}", f"{d['ms_per_step']:.1f}"]
    if prefill_split:
      cells += [f"{d['prefill_ms']:.1f}", f"{d['decode_ms_per_step']:.1f}"]
    cells += [f"{d['ms_per_sample']:.2f}", f"{d['share_speedup']:.2f}x" if d["share_prefix"] else "(ref)",
              f"{d['kv_cache_mb']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
  ap.add_argument("--batches", default="1,8,64,256", help="comma list of row counts B")
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--samples-per-prompt", type=int, default=4, help="G for B > 1 (B=1 uses G=1)")
  ap.add_argument("--prefill-split", action=argparse.BooleanOptionalAction, default=True,
                  help="also time the prompt forward alone to split prefill from decode")
  ap.add_argument("--json", default=None, help=f"output path (default {DEFAULT_JSON}; _quick.json with --quick)")
  ap.add_argument("--quick", action="store_true", help="tiny model, B in 1,8,64, 32 new tokens, 1 repeat")
  args = ap.parse_args(argv)
  if args.quick:
    args.models, args.batches, args.new_tokens, args.repeats = "tiny", "1,8,64", 32, 1
  args.json = args.json or (QUICK_JSON if args.quick else DEFAULT_JSON)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  batches = [int(b) for b in args.batches.split(",")]

  env = environment()
  log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
  log(f"load average at start: {os.getloadavg()}")
  log(f"settings: new_tokens={args.new_tokens}, repeats={args.repeats}, G={args.samples_per_prompt} (G=1 at B=1), "
      "temperature=1.0, no top-k/top-p, eos_ids=() so every row decodes the full length")
  t_start = time.perf_counter()
  rows = []
  out = dict(environment=env, settings=vars(args), rows=rows)
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  for name in models:
    t0 = time.perf_counter()
    model, prompt_fn = load(name)
    log(f"[{name}] loaded in {time.perf_counter() - t0:.1f}s: {model.cfg}")
    for B in batches:
      t0 = time.perf_counter()
      new = bench_batch(name, model, prompt_fn, B, args)
      rows.extend(new)
      s, u = new
      log(f"[{name}] B={B} T={s['prompt_len']}: shared {s['median_s']:.3f}s, unshared {u['median_s']:.3f}s, "
          f"speedup {s['share_speedup']:.2f}x, first calls {s['first_call_s']:.1f}/{u['first_call_s']:.1f}s, "
          f"peak RSS {s['peak_rss_mb']:.0f} MB ({time.perf_counter() - t0:.0f}s)")
      out["wall_s"] = time.perf_counter() - t_start
      with open(args.json, "w") as f:  # rewritten after every B so a killed run keeps what it measured
        json.dump(out, f, indent=1)
    del model
  out["wall_s"] = time.perf_counter() - t_start
  out["load_average_end"] = os.getloadavg()
  with open(args.json, "w") as f:
    json.dump(out, f, indent=1)
  log("")
  log(f"Sampler throughput ({env['device']}, {env['cpu_count']} CPUs, jax {env['jax']}); "
      f"{args.new_tokens} new tokens per row, no EOS (fixed work), temperature 1.0, full vocabulary.")
  log("tok/s = B*new_tokens/median; ms/step = median/new_tokens; ms/sample = median/B; "
      "share speedup = unshared/shared median time" +
      ("; decode ms/step = (median - prefill)/decode steps" if args.prefill_split else "") + ".")
  log("")
  log(fmt_table(rows, args.prefill_split))
  log("")
  log(f"wall time {out['wall_s']:.0f}s; load average at end: {out['load_average_end']}; JSON: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
