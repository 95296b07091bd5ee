"""Static vs continuous-batching sampler on a long-tailed length distribution (rows that end early).

  python benchmarks/sampler_stragglers.py --quick               # 8 prompts x 4 samples, 256 new tokens, one repeat
  python benchmarks/sampler_stragglers.py --json results.json   # 16 prompts x 4 samples, 512 new tokens, 2 repeats

SmolLM2-135M-Instruct samples reasoning-gym `gsm_symbolic` prompts (chat template) at temperature 0.9 with its EOS:
some rows answer in a few dozen tokens, others run to the limit. The static sampler decodes every row until the last
one ends; the continuous one refills or compacts finished rows away. Both get the same prompts and keys, so they
sample the same rows (up to float near-ties between batch compositions, counted as `rows_differing`).

Compilation is excluded: the static program is compiled ahead of time and the continuous sampler's `warmup` compiles
every bucket. Then the two alternate (static first on even repeats, continuous first on odd ones) so that drift in
machine load hits both alike. Reported per sampler: median seconds per call, decode steps, slot-steps run and spent
on ended rows; plus a text histogram of completion lengths. The JSON holds `continuous_over_static` (median time
ratio) and `wasted_slot_steps_fraction` for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, environment, log, table, write_json  # noqa: E402

from dashjax.sampling import ContinuousSampler, Sampler, SamplingConfig  # noqa: E402
from dashjax.sampling.generate import eos_ids_for  # noqa: E402


def prompts(tokenizer, P: int, seed: int):
  from dashjax.data.prompts import PromptFormatter
  from dashjax.data.sources import gym_examples

  examples = gym_examples("gsm_symbolic", P, seed)
  fmt = PromptFormatter(tokenizer, template="chat", max_prompt_tokens=4096)
  width = -(-max(len(x) for x in fmt.token_ids(examples)) // 16) * 16
  fmt = PromptFormatter(tokenizer, template="chat", max_prompt_tokens=width)
  tokens, valid = fmt.encode(examples)
  return tokens, valid, fmt.pad_id


def histogram(lengths, N: int, bins: int = 8, width: int = 40) -> str:
  edges = np.linspace(0, N, bins + 1).astype(int)
  counts = np.histogram(lengths, bins=edges + 0.5)[0]  # bin i holds lengths edges[i] + 1 .. edges[i + 1]
  scale = width / max(counts.max(), 1)
  lines = [f"  {lo + 1:4d}-{hi:4d} | {'#' * int(round(c * scale)):<{width}} {c}"
           for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
  lines.append(f"  truncated (length {N}, no EOS): {int((lengths == N).sum())} of {len(lengths)} rows")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="8 prompts x 4 samples, one repeat")
  ap.add_argument("--prompts", type=int, default=None)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=None)
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--temperature", type=float, default=0.9)
  ap.add_argument("--slots", type=int, default=0, help="continuous: decode slots (0: all rows)")
  ap.add_argument("--min-slots", type=int, default=1, help="continuous: smallest compiled batch")
  ap.add_argument("--bucket-step", type=int, default=0, help="continuous: batch sizes every this many rows (0: 2^k)")
  ap.add_argument("--chunk-steps", type=int, default=0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--json", default=None)
  args = ap.parse_args(argv)
  P = args.prompts or (8 if args.quick else 16)
  N = args.new_tokens or (256 if args.quick else 512)  # 512: a tail of long rows beside typical ones, as at 2048
  repeats = args.repeats or (1 if args.quick else 2)
  out_path = args.json or os.path.join(RESULTS, f"sampler_stragglers{'_quick' if args.quick else ''}.json")

  import dashjax

  env = environment()
  model, tokenizer = dashjax.load_model("smollm2-135m-instruct")
  graphdef, params = nnx.split(model)
  tokens, valid, pad_id = prompts(tokenizer, P, args.seed)
  B = P * args.samples
  cfg = SamplingConfig(max_new_tokens=N, temperature=args.temperature, samples_per_prompt=args.samples,
                       eos_ids=eos_ids_for(model, tokenizer), pad_id=pad_id, slots=args.slots,
                       min_slots=args.min_slots, chunk_steps=args.chunk_steps, bucket_step=args.bucket_step)
  log(f"sampler stragglers: SmolLM2-135M-Instruct, {P} gsm_symbolic prompts x {args.samples} samples = {B} rows, "
      f"prompt width {tokens.shape[1]}, {N} new tokens, T={args.temperature}; {env['nproc']} CPUs")
  key0 = jax.random.key(args.seed)
  static = Sampler(graphdef, dataclasses.replace(cfg, continuous=False))
  cont = ContinuousSampler(graphdef, cfg)
  t0 = time.perf_counter()
  static_exe = static.program.lower(params, tokens, valid, key0).compile()  # compile only: no full decode as warm-up
  static_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  cont.warmup(params, tokens, valid, key0)
  cont_compile = time.perf_counter() - t0
  log(f"compile: static {static_compile:.1f} s, continuous {cont_compile:.1f} s ({dict(cont.traces)})")

  def run_static(key):
    return jax.block_until_ready(static_exe(params, tokens, valid, key))

  runs = {"static": [], "continuous": []}
  for r in range(repeats):
    key = jax.random.fold_in(key0, r)
    order = ("static", "continuous") if r % 2 == 0 else ("continuous", "static")
    outs = {}
    for name in order:
      t0 = time.perf_counter()
      outs[name] = jax.tree.map(np.asarray, run_static(key) if name == "static" else
                                jax.block_until_ready(cont(params, tokens, valid, key)))
      dt = time.perf_counter() - t0
      st = (static if name == "static" else cont).stats(outs[name])
      runs[name].append(dict(seconds=dt, decode_steps=st.decode_steps, slot_steps=st.slot_steps,
                             wasted_slot_steps=st.wasted_slot_steps, chunks=st.chunks, compactions=st.compactions,
                             lengths=outs[name].lengths_B.tolist()))
      log(f"repeat {r} {name:10s} {dt:7.1f} s  {st}")
    a, b = outs["static"], outs["continuous"]
    differ = np.flatnonzero((a.tokens_BxN != b.tokens_BxN).any(1))
    runs["continuous"][-1]["rows_differing"] = len(differ)
    runs["continuous"][-1]["first_difference"] = [int(np.argmax(a.tokens_BxN[i] != b.tokens_BxN[i])) for i in differ]
  assert dict(cont.traces) == {k: 1 for k in cont.traces}, f"something compiled twice: {dict(cont.traces)}"

  summary = {}
  for name, rs in runs.items():
    slot, wasted = sum(x["slot_steps"] for x in rs), sum(x["wasted_slot_steps"] for x in rs)
    summary[name] = dict(median_s=statistics.median(x["seconds"] for x in rs), slot_steps=slot / len(rs),
                         wasted_slot_steps=wasted / len(rs), wasted_slot_steps_fraction=wasted / max(slot, 1),
                         decode_steps=statistics.mean(x["decode_steps"] for x in rs),
                         chunks=statistics.mean(x["chunks"] for x in rs),
                         compactions=statistics.mean(x["compactions"] for x in rs))
  ratio = summary["continuous"]["median_s"] / summary["static"]["median_s"]
  rows = [[name, f"{s['median_s']:.1f}", f"{s['decode_steps']:.0f}", f"{s['slot_steps']:.0f}",
           f"{s['wasted_slot_steps']:.0f}", f"{s['wasted_slot_steps_fraction']:.1%}", f"{s['chunks']:.0f}",
           f"{s['compactions']:.0f}"] for name, s in summary.items()]
  log("\n" + table(["sampler", "median s", "decode steps", "slot-steps", "wasted slot-steps", "wasted", "chunks",
                    "compactions"], rows))
  lengths = np.concatenate([np.asarray(x["lengths"]) for x in runs["continuous"]])
  log(f"\ncontinuous / static time: {ratio:.3f}; rows differing between the two (float near-ties): "
      f"{[x['rows_differing'] for x in runs['continuous']]} of {B}")
  log(f"completion lengths over {repeats} repeat(s) (mean {lengths.mean():.0f}, median {np.median(lengths):.0f}):\n"
      + histogram(lengths, N))
  write_json(out_path, dict(
      environment=env, model="smollm2-135m-instruct", task="gsm_symbolic", prompts=P, samples=args.samples, rows=B,
      prompt_width=int(tokens.shape[1]), new_tokens=N, temperature=args.temperature, repeats=repeats,
      slots=args.slots, min_slots=args.min_slots, chunk_steps=args.chunk_steps, bucket_step=args.bucket_step,
      compile_s=dict(static=static_compile, continuous=cont_compile), compiled_programs=dict(cont.traces),
      continuous_over_static=ratio,
      wasted_slot_steps_fraction={k: v["wasted_slot_steps_fraction"] for k, v in summary.items()},
      summary=summary, runs=runs))
  log(f"wrote {out_path}")


if __name__ == "__main__":
  main()
