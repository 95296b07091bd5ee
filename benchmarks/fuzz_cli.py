"""Feeds generated bad configs and malformed data files to `dashjax-train` (and bad arguments to `dashjax-eval` and
`dashjax-generate`) and counts what the user sees:

  one_line_error   exit status 2 (an input error), exactly one `PROG: error:` line, no traceback and no traceback log
  counted_skip     exit 0 with one warning that counts the skipped rows (data cases only)
  internal_error   one `PROG: error:` line from the tools' path for unexpected errors (exit 1, "ExceptionType:
                   message", a traceback log named): the input was bad, but the tool did not recognise it as such
  raw_traceback    a Python traceback, or a failure without the one-line error
  silent_run       exit 0 with no word about the bad input

    python benchmarks/fuzz_cli.py [--quick] [--json PATH] [--jobs 2]

Every case is invalid by construction (values outside a field's documented range, unknown names, wrong types,
typos of real keys, broken rows), so `internal_error`, `silent_run` and `raw_traceback` should all be 0. Each case is
one subprocess on configs/tiny.py with one training step; cases that pass validation load the tiny random model.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
# distinct problems: the loader drops training problems that are also held out
GOOD = [json.dumps({"problem": f"Write {i + 2} words with the letter k.", "answer": "k"}) for i in range(40)]

# field -> values that its documented range excludes
BAD_VALUES = {
    "rl.prompts_per_step": [0, -4], "rl.samples_per_prompt": [0, -1], "rl.updates_per_batch": [0],
    "rl.epochs_per_batch": [0], "sampling.batch_size": [0, 6], "sampling.max_new_tokens": [0, -8],
    "train.micro_batch_size": [0, 3], "train.num_steps": [0, -1], "train.keep_checkpoints": [0, -2],
    "data.max_prompt_tokens": [0], "eval.num_prompts": [0], "eval.samples": [0, -1], "eval.batch_size": [0],
    "sampling.top_k": [-1], "reward.workers": [-1], "data.train_size": [-5], "data.heldout_size": [-1],
    "train.checkpoint_every": [-1], "train.warmup_steps": [-3], "eval.max_new_tokens": [-1], "eval.every": [-2],
    "train.logprob_chunk": [-1], "train.attention_block": [0],
    "train.learning_rate": [0.0, -1e-3, "nan", "inf"], "train.max_grad_norm": [-1.0, "nan"],
    "train.weight_decay": [-0.1], "rl.filter_threshold": [-0.5, "nan"], "rl.clip_eps": [0.0, -0.2],
    "rl.kl_beta": [-0.1, "inf"], "sampling.temperature": [0.0, -1.0, "nan"], "eval.temperature": [-0.5],
    "sampling.top_p": [0.0, 1.5, -0.1], "reward.timeout_s": [0.0, -5.0, "nan"],
    "mode": ["rlhf"], "rl.algo": ["dashh", "ppo"], "rl.advantage": ["zscore"], "rl.kl_estimator": ["k2"],
    "rl.loss_aggregation": ["sum"], "rl.filter_normalization": ["none"], "model.dtype": ["float8", "fp16"],
    "model.param_dtype": ["int8"], "data.source": ["s3", ""], "data.template": ["alpaca"],
    "train.lr_schedule": ["cosine"], "train.remat": ["partial"], "train.attention": ["flash3"],
    "data.bad_rows": ["ignore"], "reward.fn": ["exact", "gym", "no_module_xyz:f", "os.path:nofn"],
    "model.source": ["/no/such/model.gguf", "not a model", "./missing-folder/"],
    "mesh.data": [0, 3], "mesh.fsdp": [-2], "data.task": ["gsm_symbolic"], "data.path": ["/no/such/file.jsonl"],
    "eval.samples+eval.temperature": [(4, 0.0)],
}
TYPE_ERRORS = {"train.num_steps": "ten", "train.learning_rate": "fast", "sampling.share_prefix": "maybe",
               "rl.samples_per_prompt": "4.5"}
TYPOS = ["rl.algoo", "train.lerning_rate", "sampling.temprature", "data.pth", "evals.samples", "rl.samples"]

# name -> the lines of a .jsonl file (strings are written as they are), and whether the run could still train
DATA_CASES = {
    "broken_json_line": GOOD[:20] + ['{"problem": "x", "answer": '] + GOOD[20:],
    "empty_file": [],
    "blank_lines_only": ["", "  ", ""],
    "missing_answer_rows": GOOD[:30] + [json.dumps({"problem": "no gold"})] * 3,
    "null_problem_rows": GOOD[:30] + [json.dumps({"problem": None, "answer": "1"})],
    "empty_answer_rows": GOOD[:30] + [json.dumps({"problem": "p", "answer": ""})] * 2,
    "non_object_rows": GOOD[:30] + ["[1, 2]", '"text"', "42"],
    "all_rows_bad": [json.dumps({"question": "q", "answer": "a"})] * 10,
    "wrong_field_names": [json.dumps({"question": "q", "solution": "a"})] * 10,
    "binary_garbage": ["\x00\x01\x02\xff"],
    "truncated_last_line": GOOD[:30] + ['{"problem": "cut'],
}


def _value(v) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


def config_cases(rng: random.Random, quick: bool) -> list[tuple[str, list[str]]]:
  cases = []
  for field, values in BAD_VALUES.items():
    for v in values:
      if isinstance(v, tuple):
        names = field.split("+")
        cases.append((f"{field}={v}", [f"--config.{n}={_value(x)}" for n, x in zip(names, v)]))
      else:
        cases.append((f"{field}={v}", [f"--config.{field}={_value(v)}"]))
  cases += [(f"{f}={v} (type)", [f"--config.{f}={v}"]) for f, v in TYPE_ERRORS.items()]
  cases += [(f"{k} (typo)", [f"--config.{k}=1"]) for k in TYPOS]
  cases += [("missing config file", ["--config=configs/no_such_config.py"]), ("no --config", ["--config="]),
            ("unknown flag", ["--workdirs=/tmp/x"])]
  if quick:
    cases = rng.sample(cases, 20)
  return cases


INPUT_ERROR_STATUS = 2  # dashjax.cli.errors.report: input errors exit 2, anything unexpected 1 with a log
TRACEBACK_LOG = "(traceback: "  # how report() names the log of an unexpected error
FAILURES = ("internal_error", "raw_traceback", "silent_run")


def classify(proc, prog: str, expect_skip: bool) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f"{prog}: error:")]
  if "Traceback (most recent call last)" in proc.stderr:
    return "raw_traceback"
  if proc.returncode != 0:
    if len(lines) != 1:
      return "raw_traceback"
    clear = proc.returncode == INPUT_ERROR_STATUS and TRACEBACK_LOG not in lines[0]
    return "one_line_error" if clear else "internal_error"
  if expect_skip and "skipped" in proc.stderr:
    return "counted_skip"
  return "silent_run"


def run_case(name, args, workdir, data_file=None, expect_skip=False, prog="dashjax-train"):
  module = {"dashjax-train": "train", "dashjax-eval": "eval", "dashjax-generate": "generate"}[prog]
  cmd = [sys.executable, "-m", f"dashjax.cli.{module}"]
  if prog != "dashjax-generate":
    base = [f"--config={TINY}", f"--workdir={workdir}"]
    if prog == "dashjax-train":
      base += ["--config.train.num_steps=1", "--progress=false"]
    if data_file:
      base.append(f"--config.data.path={data_file}")
    cmd += base
  cmd += args
  t0 = time.perf_counter()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_WORKER_HOSTNAMES="localhost")
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  outcome = classify(proc, prog, expect_skip)
  error = next((l for l in proc.stderr.splitlines() if l.startswith(f"{prog}: error:")), "")
  skip = next((l for l in proc.stderr.splitlines() if "skipped" in l), "")
  return {"case": name, "prog": prog, "outcome": outcome, "rc": proc.returncode, "seconds": time.perf_counter() - t0,
          "message": error or skip, "tail": proc.stderr[-1500:] if outcome in FAILURES else ""}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="20 config cases, 4 data cases")
  p.add_argument("--json", default=None)
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  rng = random.Random(args.seed)
  tmp = tempfile.mkdtemp(prefix="dashjax-fuzz-")
  jobs = []
  for i, (name, extra) in enumerate(config_cases(rng, args.quick)):
    jobs.append(dict(name=name, args=extra, workdir=os.path.join(tmp, f"c{i}")))
  data = list(DATA_CASES.items())
  if args.quick:
    data = rng.sample(data, 4)
  for name, lines in data:
    path = os.path.join(tmp, f"{name}.jsonl")
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
      f.write("\n".join(lines) + ("\n" if lines else ""))
    partly_good = any(l in GOOD for l in lines)
    jobs.append(dict(name=f"data:{name}", args=[], workdir=os.path.join(tmp, f"d-{name}"), data_file=path,
                     expect_skip=partly_good))
    if partly_good:
      jobs.append(dict(name=f"data:{name} bad_rows=error", args=["--config.data.bad_rows=error"],
                       workdir=os.path.join(tmp, f"d-{name}-e"), data_file=path))
  jobs += [dict(name="eval: missing workdir", args=[], workdir=os.path.join(tmp, "nope"), prog="dashjax-eval"),
           dict(name="eval: no --config", args=["--config="], workdir=tmp, prog="dashjax-eval")]
  for extra in (["--samples", "0"], ["--samples", "3"], ["--top-p", "0"], ["--max-new-tokens", "-1"],
                ["--model", "/no/such.gguf"], ["--temperature", "nan"]):
    jobs.append(dict(name=f"generate {' '.join(extra)}", args=extra, workdir=None, prog="dashjax-generate"))

  t0 = time.perf_counter()
  results = []
  with cf.ThreadPoolExecutor(args.jobs) as pool:
    for r in pool.map(lambda j: run_case(**j), jobs):
      results.append(r)
      print(f"{r['outcome']:15s} {r['seconds']:5.1f}s  {r['case']:45s} {r['message'][:110]}", flush=True)
  counts = collections.Counter(r["outcome"] for r in results)
  print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s:")
  for k in ("one_line_error", "counted_skip", *FAILURES):
    print(f"  {k:15s} {counts.get(k, 0)}")
  for r in results:
    if r["outcome"] in FAILURES:
      print(f"\n--- {r['outcome']}: {r['case']} (exit {r['rc']})\n{r['tail']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"counts": dict(counts), "cases": results}, f, indent=2)
  return 0 if sum(counts.get(k, 0) for k in FAILURES) == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
