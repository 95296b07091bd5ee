"""Per-chip memory of the paper's workload on a TPU slice, from `dashjax-fit`'s ahead-of-time compiles.

  python benchmarks/fit_tables.py [--topology v5e:2x4] [--jobs sizes,sweep,scan,single] [--json PATH]

Jobs (each appended to the JSON as it finishes, so an interrupted run keeps what it measured):
  sizes   configs/qwen25_math.py at 0.5b, 1.5b, 3b as shipped: every program
  sweep   0.5b with mesh.fsdp = 1, 2, 4, 8 (the rest data-parallel): learner programs and the state per chip
  scan    3b micro-step with train.scan_layers false and true: compile time and memory
  single  0.5b on one v5e chip (one chip of v5e:2x2) with the reductions it needs
Needs libtpu (pip install -e '.[tpu]' from the checkout, Linux only); runs on a CPU-only machine. Compiles take minutes each on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import qwen25_math  # noqa: E402
from dashjax.train.fit import GiB, check, format_report  # noqa: E402

SINGLE_CHIP = {"sampling.batch_size": 64, "train.micro_batch_size": 4, "eval.batch_size": 64, "mesh.data": 1,
               "mesh.fsdp": 1}


def config(size, **overrides):
  c = qwen25_math.get_config(size)
  for key, value in {**qwen25_math.HAND_SET, **overrides}.items():  # the sizes used before the planner
    section, field = key.split(".")
    c[section][field] = value
  return c


def jobs(names, topology):
  if "sizes" in names:
    for size in ("0.5b", "1.5b", "3b"):
      yield f"{size} as shipped", config(size), topology, None
  if "sweep" in names:
    for fsdp in (1, 2, 4, 8):
      yield f"0.5b fsdp={fsdp}", config("0.5b", **{"mesh.fsdp": fsdp, "mesh.data": -1}), topology, \
          ("micro_step", "apply")
  if "scan" in names:
    for scan in (False, True):
      yield f"3b scan_layers={scan}", config("3b", **{"train.scan_layers": scan}), topology, ("micro_step",)
  if "single" in names:
    # libtpu describes v5e slices from 2x2 up; a 1x1x1 mesh uses one of its chips, as a v5e-1 would
    yield "0.5b on one v5e chip", config("0.5b", **SINGLE_CHIP), "v5e:2x2", None


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--topology", default="v5e:2x4")
  p.add_argument("--jobs", default="sizes,sweep,scan,single")
  p.add_argument("--json", default="benchmarks/results/fit_tables.json")
  p.add_argument("--markdown", default="", help="only write markdown tables from an existing --json to this path")
  args = p.parse_args()
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(markdown(json.load(open(args.json))))
    return
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  results = json.load(open(args.json)) if os.path.exists(args.json) else {}
  for name, c, topology, wanted in jobs(args.jobs.split(","), args.topology):
    if name in results:
      print(f"== {name}: already measured, skipped")
      continue
    t0 = time.perf_counter()
    report = check(c, topology=topology, programs_wanted=wanted,
                   progress=lambda prog: print(f"   compiling {prog} ...", flush=True))
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"== {name} ({report['wall_s']:.0f}s)\n{format_report(report)}\n", flush=True)
    results[name] = report
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  print("summary (GiB per chip, worst program):")
  for name, r in results.items():
    worst = max(r["programs"].items(), key=lambda kv: kv[1]["total_bytes"])
    print(f"  {name:<24} {worst[1]['total_bytes'] / GiB:6.2f} ({worst[0]})  {'fits' if r['fits'] else 'DOES NOT FIT'}")


def markdown(results: dict) -> str:
  g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
  out = []
  for name, r in results.items():
    out.append(f"**{name}**: {r['model']} on `{r['topology']}` ({r['chips']} x {r['device_kind']}, "
               f"{g(r['memory_per_chip_bytes'])} GiB per chip), mesh {r['mesh']}; state per chip: parameters "
               f"{g(r['state_per_chip_bytes']['params'])} GiB, Adam moments {g(r['state_per_chip_bytes']['opt_state'])} "
               f"GiB -> **{'fits' if r['fits'] else 'does not fit'}**\n")
    out.append("| program | args | outputs | aliased | temps | resident | total GiB | of chip | compile s |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for prog, p in r["programs"].items():
      out.append(f"| {prog} | {g(p['argument_bytes'])} | {g(p['output_bytes'])} | {g(p['alias_bytes'])} | "
                 f"{g(p['temp_bytes'])} | {g(p['resident_bytes'])} | **{g(p['total_bytes'])}** | "
                 f"{100 * p['total_bytes'] / r['memory_per_chip_bytes']:.0f}% | {p['compile_s']:.0f} |")
    out.append("")
  return "\n".join(out)


if __name__ == "__main__":
  main()
