"""Predicted seconds per update, by phase, for dash and grpo at a config's shapes on a TPU slice: the TPU compiler's
cost model (programs compiled here by libtpu, nothing run), never a measurement.

  python benchmarks/predict_update.py [--size 0.5b] [--topology v5e:2x4] [--json PATH]

Phases (per chip; the slice runs them in parallel):
  prefill   the sampler's start program (prompt forward, first tokens, cache set-up), once per sampler call
  decode    (max_new_tokens - 1) steps x one decode step, every row to max_new_tokens (the stated length assumption,
            an upper bound: no row ends early), costed at the mean context prompt + max_new_tokens / 2 (a step's
            cost is linear in its context), once per sampler call
  learn     micro-steps x one micro-step (all rows kept: dash's filtering only lowers this)
  apply     the optimizer step and the compute-dtype cast for the samplers, once per update
dash: one sampler call of sampling.batch_size rows; grpo: R / train.micro_batch_size calls of micro_batch_size rows.
The micro-step is costed unrolled (scan_layers off), with one attention block and one log-prob chunk (a loop body is
counted once), at 1 and 2 layers, and extrapolated to the model's layers (its cost is linear in them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import qwen25_math  # noqa: E402
from dashjax.models.presets import model_config  # noqa: E402
from dashjax.train.fit import check  # noqa: E402

PAPER_DASH_OVER_GRPO = 0.17  # the paper's GPU figure for the same workload


def config(size, **overrides):
  c = qwen25_math.get_config(size)
  for key, value in {**qwen25_math.HAND_SET, **overrides}.items():  # the sizes used before the planner
    section, field = key.split(".")
    c[section][field] = value
  return c


# grpo samples train.micro_batch_size rows per call, whole prompts split over the rows axis: on 8 chips the shipped 8
# rows (2 prompts) are refused by the config check, so grpo runs its smallest allowed micro-batch, 32 rows (8 prompts).
GRPO = {"train.micro_batch_size": 32}


def phases(size: str, algo: str, topology: str, log) -> dict:
  extra = {"rl.algo": algo, **(GRPO if algo == "grpo" else {})}
  c = config(size, **extra)
  T, N = int(c.data.max_prompt_tokens), int(c.sampling.max_new_tokens)
  R, mb = c.rl.prompts_per_step * c.rl.samples_per_prompt, int(c.train.micro_batch_size)
  rows = int(c.sampling.batch_size) if algo != "grpo" else mb
  calls = R // rows
  context = T + N // 2
  log(f"{size} {algo}: sampler ({rows} rows per call) and a decode step at {context} keys")
  r = check(c, topology=topology, programs_wanted=("decode",), decode_context=context)
  start = r["programs"]["sampler/start"]["predicted_s"]
  step = r["decode"]["predicted_s"]
  log(f"{size} {algo}: learner micro-step at 1 and 2 layers, unrolled")
  arch = model_config(c.model.source)
  learn = {}
  for layers in (1, 2):
    cl = config(size, **{**extra, "train.scan_layers": False, "train.logprob_chunk": 0,
                         "train.attention_block": T + N})
    rm = check(cl, topology=topology, programs_wanted=("micro_step",),
               model_cfg=dataclasses.replace(arch, num_layers=layers))
    learn[layers] = rm["programs"]["micro_step"]["predicted_s"]
  micro = learn[1] + (arch.num_layers - 1) * (learn[2] - learn[1])
  log(f"{size} {algo}: optimizer step and cast")
  ra = check(c, topology=topology, programs_wanted=("apply", "sampler_cast"))
  apply = sum(p["predicted_s"] or 0.0 for p in ra["programs"].values())
  out = {"algo": algo, "sampler_rows": rows, "sampler_calls": calls, "decode_steps": N - 1, "decode_context": context,
         "micro_steps": R // mb, "prefill_s": calls * start, "decode_step_s": step,
         "decode_s": calls * (N - 1) * step, "micro_step_s": micro, "learn_s": (R // mb) * micro,
         "apply_s": apply, "decode_over_floor": r["decode"]["predicted_over_floor"]}
  out["update_s"] = out["prefill_s"] + out["decode_s"] + out["learn_s"] + out["apply_s"]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="0.5b")
  p.add_argument("--topology", default="v5e:2x4")
  p.add_argument("--json", default="benchmarks/results/predict_update.json")
  args = p.parse_args()
  t0 = time.perf_counter()
  log = lambda m: print(f"[{time.perf_counter() - t0:6.0f}s] {m}", flush=True)  # noqa: E731
  res = {a: phases(args.size, a, args.topology, log) for a in ("dash", "grpo")}
  res["dash_over_grpo"] = res["dash"]["update_s"] / res["grpo"]["update_s"]
  res.update(size=args.size, topology=args.topology, paper_dash_over_grpo=PAPER_DASH_OVER_GRPO,
             source="TPU compiler cost model (bytes/flops roofline per chip), not a measurement")
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(res, f, indent=2)
  print(markdown(res))


def markdown(res: dict) -> str:
  lines = [f"Predicted seconds per update, Qwen2.5-{res['size']} on `{res['topology']}` (the TPU compiler's cost "
           f"model, not a measurement; every row to max_new_tokens):", "",
           "| | sampler calls x rows | prefill s | decode steps x step ms | decode s | micro-steps x ms | learn s | "
           "apply s | update s |", "|---|---|---|---|---|---|---|---|---|"]
  for a in ("dash", "grpo"):
    r = res[a]
    lines.append(f"| {a} | {r['sampler_calls']} x {r['sampler_rows']} | {r['prefill_s']:.2f} | "
                 f"{r['sampler_calls']} x {r['decode_steps']} x {1e3 * r['decode_step_s']:.2f} | {r['decode_s']:.1f} | "
                 f"{r['micro_steps']} x {1e3 * r['micro_step_s']:.1f} | {r['learn_s']:.2f} | {r['apply_s']:.3f} | "
                 f"**{r['update_s']:.1f}** |")
  lines.append(f"\ndash / grpo: **{res['dash_over_grpo']:.3f}** predicted (paper, on GPUs: {res['paper_dash_over_grpo']})")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
