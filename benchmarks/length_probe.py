"""Does the call size change what is sampled? grpo's 4-row calls against dash's 32-row call, at fixed weights.

  python benchmarks/length_probe.py --batches 6 --json docs/benchmarks/length_probe.json

At the main job's initial weights (or a checkpoint's, --params), the same training prompts are sampled
  (a) as one call of P*G rows (dash, pg) and as P calls of G rows (grpo), each with its own key; and
  (b) prompt 0 alone (rows 0..G-1) and inside the P*G-row call under the same key: its rows draw the same uniforms
      (they depend only on key, row and position), so the tokens must agree unless the call size changes the
      computed distribution.
(a) compares mean response length and truncated fraction with their standard errors; (b) counts rows whose tokens
differ and the largest log-prob difference over the positions where they agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, environment, load_config, log, table, write_json  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "smollm2_arith.py"))
  ap.add_argument("--batches", type=int, default=6, help="training batches of P prompts sampled both ways")
  ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "length_probe.json"))
  args = ap.parse_args(argv)

  from flax import nnx

  from dashjax.data import PromptFormatter, PromptIterator, load_examples
  from dashjax.models.loading import load_model
  from dashjax.sampling.generate import eos_ids_for
  from dashjax.train import programs

  c = load_config(args.config)
  G, P = c.rl.samples_per_prompt, c.rl.prompts_per_step
  model, tok = load_model(c.model.source, dtype=c.model.dtype)
  graphdef, params = nnx.split(model)
  fmt = PromptFormatter(tok, template=c.data.template, instruction=c.data.instruction,
                        max_prompt_tokens=c.data.max_prompt_tokens)
  train, _ = load_examples(c.data)
  train = [e for e, ok in zip(train, fmt.fits(train)) if ok]
  it = PromptIterator(train, P, c.data.seed)
  sampler = programs.train_sampler(c, graphdef, eos_ids_for(model, tok), fmt.pad_id)
  env = environment()
  res = {"environment": env, "settings": {"config": os.path.relpath(args.config, ROOT), "batches": args.batches,
                                          "P": P, "G": G, "max_new_tokens": c.sampling.max_new_tokens,
                                          "continuous": bool(c.sampling.continuous)}}
  big, small, t0 = {"len": [], "trunc": []}, {"len": [], "trunc": []}, time.perf_counter()
  exact = {"rows": 0, "rows_differ": 0, "max_abs_logprob_diff": 0.0}
  for b in range(args.batches):
    tokens, valid = fmt.encode(it.next_batch())
    key = jax.random.fold_in(jax.random.key(c.train.seed), b)
    out = jax.tree.map(np.asarray, sampler(params, jnp.asarray(tokens), jnp.asarray(valid), key))
    big["len"].append(out.lengths_B), big["trunc"].append(out.truncated_B)
    for p in range(P):  # grpo's calls: one prompt (G rows) each, keys folded as the trainer does
      o = jax.tree.map(np.asarray, sampler(params, jnp.asarray(tokens[p:p + 1]), jnp.asarray(valid[p:p + 1]),
                                           jax.random.fold_in(jax.random.fold_in(key, 10_000 + p), 0)))
      small["len"].append(o.lengths_B), small["trunc"].append(o.truncated_B)
    # (b): prompt 0 alone under the big call's key draws the same uniforms for its G rows
    o = jax.tree.map(np.asarray, sampler(params, jnp.asarray(tokens[:1]), jnp.asarray(valid[:1]), key))
    for r in range(G):
      exact["rows"] += 1
      same = (o.lengths_B[r] == out.lengths_B[r]) and (o.tokens_BxN[r] == out.tokens_BxN[r]).all()
      exact["rows_differ"] += int(not same)
      n = int(np.argmax(o.tokens_BxN[r] != out.tokens_BxN[r])) if not same else int(o.lengths_B[r])
      if n:
        d = float(np.abs(o.logprobs_BxN[r, :n] - out.logprobs_BxN[r, :n]).max())
        exact["max_abs_logprob_diff"] = max(exact["max_abs_logprob_diff"], d)
    log(f"batch {b + 1}/{args.batches}: {P * G}-row call mean length {out.lengths_B.mean():.1f}, {G}-row calls "
        f"{np.concatenate(small['len'][-P:]).mean():.1f} ({time.perf_counter() - t0:.0f}s)")
  rows = []
  for name, d in ((f"one call of {P * G} rows (dash, pg)", big), (f"{P} calls of {G} rows (grpo)", small)):
    n, t = np.concatenate(d["len"]).astype(float), np.concatenate(d["trunc"]).astype(float)
    d.update(rows=len(n), len_mean=float(n.mean()), len_se=float(n.std(ddof=1) / np.sqrt(len(n))),
             trunc_mean=float(t.mean()), trunc_se=float(t.std(ddof=1) / np.sqrt(len(t))))
    rows.append([name, str(len(n)), f"{d['len_mean']:.2f} +/- {d['len_se']:.2f}",
                 f"{d['trunc_mean']:.3f} +/- {d['trunc_se']:.3f}"])
    d.pop("len"), d.pop("trunc")
  res.update(big_call=big, small_calls=small, same_key_prompt0=exact, wall_s=time.perf_counter() - t0)
  write_json(args.json, res)
  log(table(["sampled as", "rows", "mean response length (+/- se)", "truncated fraction (+/- se)"], rows))
  log(f"prompt 0 alone vs inside the {P * G}-row call, same key: {exact['rows_differ']} of {exact['rows']} rows "
      f"differ; max |log-prob difference| where tokens agree {exact['max_abs_logprob_diff']:.2e}")
  log(f"JSON: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
