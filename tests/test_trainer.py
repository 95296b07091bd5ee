"""The training loop: sampler call counts, no recompilation, exact resume, SIGTERM, SFT, KL, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from configs_for_tests import tiny_config as _config  # noqa: E402
from eos_model import eos_likely_tiny  # noqa: E402

from dashjax.config import ConfigError, validate  # noqa: E402
from dashjax.train.metrics import read_metrics  # noqa: E402
from dashjax.train.trainer import Trainer  # noqa: E402

TIMING = ("sample_s", "reward_s", "update_s", "step_s", "tokens_per_s")


class _CountingSampler:
  def __init__(self, sampler):
    self.sampler, self.calls, self.rows = sampler, 0, []

  def __call__(self, params, tokens, valid, key):
    self.calls += 1
    self.rows.append(tokens.shape[0] * self.sampler.cfg.samples_per_prompt)
    return self.sampler(params, tokens, valid, key)

  def stats(self, out):
    return self.sampler.stats(out)


@pytest.mark.parametrize("algo,expected_calls,rows_per_call", [("grpo", 16 // 4, 4), ("dash", 16 // 8, 8)])
def test_sampler_calls_per_update(tmp_path, algo, expected_calls, rows_per_call):
  """grpo samples P*G/micro_batch_size times per update, dash P*G/sampling.batch_size times."""
  c = _config(**{"rl.algo": algo, "sampling.batch_size": 8, "train.micro_batch_size": 4})
  trainer = Trainer(c, str(tmp_path))
  counter = _CountingSampler(trainer.collector.sampler)
  trainer.collector.sampler = counter
  m = trainer.train_step()
  trainer.close()
  assert counter.calls == m["sampler_calls"] == expected_calls
  assert counter.rows == [rows_per_call] * expected_calls
  assert m["optimizer_updates"] == 1


def test_dash_filters_without_recompiling(tmp_path):
  """Steps keep different numbers of rows, run different numbers of micro-steps, and compile once; rows end early
  (EOS-likely model), so the sampler compacts live rows into smaller buckets, each compiled once."""
  c = _config(**{"train.num_steps": 6, "rl.prompts_per_step": 8, "sampling.batch_size": 32})
  trainer = Trainer(c, str(tmp_path), model_and_tokenizer=eos_likely_tiny())
  stats = _record_sampler_stats(trainer)
  ms = [trainer.train_step() for _ in range(6)]
  trainer.close()
  kept = [m["kept_fraction"] for m in ms]
  assert len(set(kept)) > 1, kept  # the kept count really changed between steps
  for m in ms:
    rows = round(m["kept_fraction"] * 32)
    assert m["micro_steps"] == -(-rows // 4)  # fewer micro-steps when rows are filtered
    assert m["update_skipped"] == (rows == 0)
  assert all(0 < m["truncated_fraction"] < 1 for m in ms), [m["truncated_fraction"] for m in ms]
  assert sum(s.compactions for s in stats) >= 3 and len({s.slot_steps for s in stats}) > 1  # varied paths
  assert trainer.learner.micro_step._cache_size() == 1
  assert trainer.learner.compile_counts()["apply"] == 1
  traces = trainer.collector.sampler.traces  # continuous batching: each program/bucket compiled once
  assert any(k.startswith("compact") for k in traces) and set(traces.values()) == {1}, traces


def _record_sampler_stats(trainer) -> list:
  """The continuous sampler's stats of each call the trainer makes, in a list that grows as it runs."""
  sampler, out = trainer.collector.sampler, []

  def stats(rollouts):
    out.append(sampler.last_stats)
    return sampler.last_stats

  sampler.stats = stats
  return out


def test_continuous_and_static_samplers_train_identically(tmp_path):
  """Same rows, rewards, kept rows, losses and gradient norms whether ended rows keep decoding or not. Rows end
  early (EOS-likely model); 4 slots for the 8 rows of a call, so queued rows take the slots of ended ones (refill),
  then live rows move into 2 slots (compaction)."""
  runs, stats = {}, []
  for continuous in (True, False):
    c = _config(**{"train.num_steps": 3, "sampling.continuous": continuous, "sampling.batch_size": 8,
                   "sampling.slots": 4, "sampling.min_slots": 2})
    trainer = Trainer(c, str(tmp_path / str(continuous)), model_and_tokenizer=eos_likely_tiny())
    if continuous:
      assert trainer.collector.sampler.buckets(8) == (4, 2)
      stats = _record_sampler_stats(trainer)
    runs[continuous] = [trainer.train_step() for _ in range(3)]
    trainer.close()
  drop = set(TIMING) | {"decode_slot_steps", "wasted_slot_fraction"}
  assert [{k: v for k, v in m.items() if k not in drop} for m in runs[True]] == \
      [{k: v for k, v in m.items() if k not in drop} for m in runs[False]]
  assert all(0 < m["truncated_fraction"] < 1 for m in runs[True]), [m["truncated_fraction"] for m in runs[True]]
  assert len(stats) == 6 and sum(s.compactions for s in stats) >= 3
  # A call's rows 5-8 decode only in slots freed by ended rows (refill); ended rows cost nothing more, where the
  # static sampler decodes every row until the last one ends.
  assert all(c < s for c, s in zip([m["decode_slot_steps"] for m in runs[True]],
                                   [m["decode_slot_steps"] for m in runs[False]]))
  print(f"wasted slot-step fraction: static {[m['wasted_slot_fraction'] for m in runs[False]]}, continuous "
        f"{[m['wasted_slot_fraction'] for m in runs[True]]}")


def _strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_reproduces_uninterrupted_run(tmp_path):
  c = _config(**{"train.num_steps": 4})
  straight = Trainer(c, str(tmp_path / "straight"))
  straight.run(progress=False)
  straight.close()
  first = Trainer(c, str(tmp_path / "resumed"))
  first.run(progress=False, stop_at=2)
  first.save()
  first.close()
  second = Trainer(c, str(tmp_path / "resumed"), resume=True)
  assert second.step == 2
  second.run(progress=False)
  second.close()
  a = _strip(read_metrics(str(tmp_path / "straight" / "metrics.jsonl")))
  b = _strip(read_metrics(str(tmp_path / "resumed" / "metrics.jsonl")))
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  assert a == b  # rewards, kept fractions, grad norms, losses: identical


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py", f"--workdir={workdir}",
         "--config.train.num_steps=400", "--progress=false"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and len(read_metrics(metrics)) >= 2):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "stopped by SIGTERM" in out
  done = len(read_metrics(metrics))
  assert 2 <= done < 400
  resume = subprocess.run(cmd[:-2] + [f"--config.train.num_steps={done + 2}", "--progress=false", "--resume"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resume.returncode == 0, resume.stdout + resume.stderr
  assert [r["step"] for r in read_metrics(metrics)] == list(range(1, done + 3))


@pytest.mark.parametrize("mode_args", [["--config.mode=sft"], ["--config.rl.algo=grpo"]])
def test_cli_runs_each_mode(tmp_path, mode_args):
  """The command line as a user types it: RL overrides and SFT mode, ending with held-out numbers and a curve."""
  cmd = [sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py", f"--workdir={tmp_path}",
         "--config.train.num_steps=2", "--config.eval.before=true", "--config.eval.after=true", "--progress=false",
         *mode_args]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "held-out accuracy: before" in proc.stdout
  assert os.path.exists(tmp_path / "curve.png")
  assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2]


def test_cli_rejects_a_bad_config_with_the_field_name(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py",
                         f"--workdir={tmp_path}", "--config.sampling.batch_size=6"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert "sampling.batch_size=6" in proc.stderr and "rl.samples_per_prompt" in proc.stderr


def test_kl_is_zero_at_the_first_step_and_positive_later(tmp_path):
  c = _config(**{"rl.kl_beta": 0.1, "rl.algo": "pg", "train.learning_rate": 1e-2})
  trainer = Trainer(c, str(tmp_path))
  ms = [trainer.train_step() for _ in range(3)]
  trainer.close()
  assert ms[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # the policy is the reference at the first step
  assert ms[2]["kl"] > 1e-6


def test_sft_lowers_the_likelihood_loss(tmp_path):
  c = _config(**{"mode": "sft", "train.learning_rate": 1e-2, "train.num_steps": 8})
  trainer = Trainer(c, str(tmp_path))
  ms = [trainer.train_step() for _ in range(8)]
  trainer.close()
  assert ms[-1]["nll"] < 0.5 * ms[0]["nll"], [m["nll"] for m in ms]


@pytest.mark.parametrize("overrides,fields", [
    ({"train.micro_batch_size": 3}, ["train.micro_batch_size", "rl.prompts_per_step"]),
    ({"sampling.batch_size": 6}, ["sampling.batch_size", "rl.samples_per_prompt"]),
    ({"rl.algo": "grpo", "train.micro_batch_size": 2}, ["train.micro_batch_size", "rl.samples_per_prompt"]),
    ({"rl.algo": "ppo_mini", "rl.updates_per_batch": 3}, ["rl.updates_per_batch", "rl.prompts_per_step"]),
    ({"rl.epochs_per_batch": 2}, ["rl.epochs_per_batch", "ppo_multi"]),
    ({"rl.algo": "sac"}, ["rl.algo"]),
    ({"sampling.temperature": 0.0}, ["sampling.temperature"]),
    ({"mesh.data": 3}, ["mesh.data"]),
])
def test_bad_configs_name_the_fields(overrides, fields):
  with pytest.raises(ConfigError) as e:
    validate(_config(**overrides), num_devices=2)
  for f in fields:
    assert f in str(e.value)


MULTI_DEVICE_SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.join(sys.argv[1], "configs"))
import jax, numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
import tiny
from dashjax.train.trainer import Trainer
out = {}
for name, mesh in (("one", (1, 1, 1)), ("eight", (4, 2, 1)), ("fsdp4_memory", (2, 4, 1))):
  c = tiny.get_config()
  c.rl.prompts_per_step, c.sampling.batch_size, c.train.micro_batch_size = 8, 32, 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  if name == "fsdp4_memory":  # FSDP gathers with every memory switch on
    c.train.update(remat="full", scan_layers=True, logprob_chunk=5, attention="blockwise", attention_block=8)
  t = Trainer(c, os.path.join(sys.argv[2], name))
  m = t.train_step()
  leaves = [np.asarray(x) for x in jax.tree.leaves(t.params)]
  devices = len(jax.tree.leaves(t.params)[0].sharding.device_set)
  t.close()
  out[name] = dict(metrics={k: m[k] for k in ("reward_mean", "kept_fraction", "micro_steps", "grad_norm", "pg_loss")},
                   norms=[float(np.linalg.norm(x)) for x in leaves], first=leaves[0].ravel()[:50].tolist(),
                   devices=devices)
print("RESULT" + json.dumps(out))
"""


def test_dash_step_on_8_devices_matches_one_device(tmp_path):
  proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT, ROOT, str(tmp_path)], capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  one = out["one"]
  for name in ("eight", "fsdp4_memory"):
    eight = out[name]
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert one["metrics"]["reward_mean"] == eight["metrics"]["reward_mean"]
    assert one["metrics"]["kept_fraction"] == eight["metrics"]["kept_fraction"]
    assert one["metrics"]["micro_steps"] == eight["metrics"]["micro_steps"]
    np.testing.assert_allclose(one["metrics"]["grad_norm"], eight["metrics"]["grad_norm"], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(one["norms"], eight["norms"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(one["first"], eight["first"], rtol=1e-4, atol=1e-6, err_msg=name)
