"""The batch-size planner: the sizes it may choose, its arithmetic and choice, the layer extrapolation it relies on
for TPU slices, and `auto` through dashjax-train (plan.json, config.json, a resumed run keeping its sizes)."""

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys

import pytest

from configs_for_tests import tiny_config as _tiny
from dashjax.config import ConfigError
from dashjax.train import plan as size_plan
from dashjax.train.plan import PlanError, Side

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def test_candidates_are_exactly_the_sizes_the_batch_rules_allow():
  # R = 4 prompts x 4 samples = 16 rows: sampler calls hold whole groups, micro-batches divide R.
  c = _tiny(**{"sampling.batch_size": "auto", "train.micro_batch_size": "auto"})
  assert size_plan.allowed(c, 1) == [(s, m) for s in (4, 8, 16) for m in (1, 2, 4, 8, 16)]
  # Two chips: rows split over them, so calls of one prompt and odd micro-batches are out.
  assert size_plan.allowed(c, 2) == [(s, m) for s in (8, 16) for m in (2, 4, 8, 16)]
  # grpo samples one micro-batch per call: whole groups per micro-batch, the sampler size follows it.
  grpo = _tiny(**{"rl.algo": "grpo", "train.micro_batch_size": "auto"})
  assert [m for _, m in size_plan.allowed(grpo, 1)] == [4, 8, 16]
  # A set field stays set; `free` plans it anyway (dashjax-plan).
  fixed = _tiny(**{"train.micro_batch_size": "auto"})
  assert size_plan.allowed(fixed, 1) == [(16, m) for m in (1, 2, 4, 8, 16)]
  assert len(size_plan.allowed(fixed, 1, free=True)) == 15
  with pytest.raises(ConfigError, match="must be divisible by mesh.data"):
    size_plan.allowed(_tiny(**{"train.micro_batch_size": "auto", "rl.prompts_per_step": 1,
                               "sampling.batch_size": 4}), 8)


def test_validate_names_an_unresolved_auto():
  with pytest.raises(ConfigError, match="sampling.batch_size='auto' is chosen by the planner"):
    from dashjax.config import validate

    validate(_tiny(**{"sampling.batch_size": "auto"}), num_devices=1, check_model_source=False)


def test_update_time_memory_and_choice_from_the_two_axes():
  c = _tiny(**{"sampling.batch_size": "auto", "train.micro_batch_size": "auto"})
  pairs = size_plan.allowed(c, 1)
  GiB = 2 ** 30
  # A call costs 1 s + 0.1 s per row; a micro-step 0.2 s + 0.1 s per row: large calls and large micro-batches win
  # until memory (1 GiB per sampler row, 2 GiB per micro-batch row, 20 GiB chip, 10% margin) rules them out.
  sampler = Side(memory={4: 4 * GiB, 16: 16 * GiB}, seconds={4: 1.4, 16: 2.6}, worst={4: "sampler", 16: "sampler"})
  learner = Side(memory={1: 2 * GiB, 16: 32 * GiB}, seconds={1: 0.3, 16: 1.8}, worst={1: "micro_step",
                                                                                      16: "micro_step"})
  rows, best = size_plan.choose(c, pairs, sampler, learner, apply_s=0.5, capacity=20 * GiB, margin=0.1,
                                source="measured")
  by = {(r["sampling.batch_size"], r["train.micro_batch_size"]): r for r in rows}
  # (8, 4): 2 calls x (1 + 0.8) + 4 micro-steps x (0.2 + 0.4) + 0.5
  assert by[8, 4]["update_s"] == pytest.approx(2 * 1.8 + 4 * 0.6 + 0.5)
  assert by[8, 4]["memory_bytes"] == 8 * GiB and by[8, 4]["fits"]
  assert not by[16, 16]["fits"] and not by[4, 16]["fits"]  # 32 GiB micro-step
  assert by[16, 8]["memory_bytes"] == 16 * GiB and by[16, 8]["fits"]  # 18 GiB limit
  fitting = [r for r in rows if r["fits"]]
  assert best["update_s"] == min(r["update_s"] for r in fitting)
  assert (best["sampling.batch_size"], best["train.micro_batch_size"]) == (16, 8)
  # dash keeping each of its 4 groups (of 4 rows) with probability 1/4. Reference: every subset of kept groups
  # enumerated, its micro-steps ceil(4 k / m), no optimizer step when it keeps none.
  def by_subsets(m, q):
    steps = updates = 0.0
    for kept in itertools.product((0, 1), repeat=4):
      k = sum(kept)
      p = q ** k * (1 - q) ** (4 - k)
      steps, updates = steps + p * math.ceil(4 * k / m), updates + p * (k > 0)
    return steps, updates

  rows, best = size_plan.choose(c, pairs, sampler, learner, apply_s=0.5, capacity=20 * GiB, margin=0.1,
                                source="measured", kept_fraction=0.25)
  for r in rows:
    s, m = r["sampling.batch_size"], r["train.micro_batch_size"]
    steps, updates = by_subsets(m, 0.25)
    assert r["micro_steps"] == pytest.approx(steps, abs=1e-3)
    assert r["update_s"] == pytest.approx(16 // s * (1 + 0.1 * s) + steps * (0.2 + 0.1 * m) + updates * 0.5)
  fitting = [r for r in rows if r["fits"]]
  assert best["update_s"] == min(r["update_s"] for r in fitting)
  assert (best["sampling.batch_size"], best["train.micro_batch_size"]) == (16, 4)  # 2.6 + 0.68 x 0.6 + 0.34
  # A learner whose two compiles came out falling with rows: no larger micro-batch is taken to need less.
  falling = Side(memory={1: 6 * GiB, 16: 4 * GiB}, seconds=learner.seconds, worst=learner.worst)
  rows, _ = size_plan.choose(c, pairs, sampler, falling, apply_s=0.5, capacity=20 * GiB, margin=0.1,
                             source="measured")
  assert min(r["memory_bytes"] for r in rows) == 6 * GiB
  # Kept fraction unknown (a run's start): every number of kept groups 0..4 equally likely.
  rows, _ = size_plan.choose(c, pairs, sampler, learner, apply_s=0.5, capacity=20 * GiB, margin=0.1,
                             source="measured", kept_fraction=None)
  by = {(r["sampling.batch_size"], r["train.micro_batch_size"]): r for r in rows}
  assert by[16, 8]["micro_steps"] == pytest.approx((0 + 1 + 1 + 2 + 2) / 5)
  # grpo does not filter: whatever the kept fraction, every row is backpropped.
  grpo = _tiny(**{"rl.algo": "grpo", "train.micro_batch_size": "auto"})
  rows, _ = size_plan.choose(grpo, size_plan.allowed(grpo, 1), sampler, learner, apply_s=0.5, capacity=20 * GiB,
                             margin=0.1, source="measured", kept_fraction=0.25)
  assert all(r["micro_steps"] == 16 // r["train.micro_batch_size"] for r in rows)
  # Nothing fits: one line naming the smallest candidate's worst program and its bytes against the chip's.
  with pytest.raises(PlanError) as e:
    size_plan.choose(c, pairs, sampler, learner, apply_s=0.5, capacity=2 * GiB, margin=0.1, source="measured")
  msg = str(e.value)
  assert "\n" not in msg and "no allowed batch size fits" in msg and "sampler" in msg
  assert "4.00 GiB" in msg and "2.00 GiB" in msg and "sampling.batch_size=4" in msg


def test_interpolation_and_probe_points():
  assert size_plan.interpolate({4: 1.0, 16: 4.0}, 8) == pytest.approx(2.0)
  assert size_plan.interpolate({4: 1.0, 16: 4.0}, 32) == pytest.approx(8.0)  # extended past the end
  assert size_plan.interpolate({4: 1.0, 8: 3.0, 16: 4.0}, 6) == pytest.approx(2.0)
  assert size_plan.interpolate({8: 5.0}, 2) == 5.0
  assert size_plan.probe_points([1, 2, 4, 8, 16, 32, 64, 128, 256], 4)[::3] == [1, 256]
  assert len(size_plan.probe_points([1, 2, 4, 8, 16, 32, 64, 128, 256], 4)) == 4
  assert size_plan.probe_points([8, 4], 4) == [4, 8]
  # Memory never falls with rows: v6e's micro-step compiled at 4 and 8 rows came out 3.688 and 3.679 GB, and the
  # line through them fell with rows (3.1 GB at 256).
  v6e = {4: 3.688e9, 8: 3.679e9}
  assert size_plan.interpolate(v6e, 256) < 3.2e9
  assert size_plan.memory_at(v6e, 256) == 3.688e9 and size_plan.memory_at(v6e, 8) == 3.688e9
  assert size_plan.memory_at({4: 1.0, 16: 4.0}, 32) == pytest.approx(8.0)  # rising memory is extrapolated as before


def test_tpu_cost_and_memory_are_affine_in_layers():
  """For a slice the planner compiles the programs at 8 and 16 layers and extrapolates to the model's: the
  micro-step's memory at 24 layers, with the paper configs' settings (layers scanned, remat), must match that
  extrapolation. (Unrolled, from 2 and 4 layers, it would be off by 13%: there the compiler needs no temporary
  buffers at all.)"""
  pytest.importorskip("libtpu")
  from dashjax.models.presets import model_config
  from dashjax.train.fit import check
  from dashjax.train.plan_probe import _extrapolate, layer_counts

  assert layer_counts(2) == (2,) and layer_counts(24) == (8, 16)
  c = _tiny(**{"rl.prompts_per_step": 8, "eval.batch_size": 8, "train.micro_batch_size": 8,
               "train.scan_layers": True, "train.remat": "full"})
  arch = model_config(c.model.source)
  got = {}
  for layers in (8, 16, 24):
    got[layers] = check(c, topology="v5e:2x2", programs_wanted=("micro_step",),
                        model_cfg=dataclasses.replace(arch, num_layers=layers))["programs"]["micro_step"]
  for key in ("total_bytes",):  # within the 10% margin the planner keeps (measured: 3%)
    guess = _extrapolate({k: float(got[k][key]) for k in (8, 16)}, 24)
    assert float(got[24][key]) == pytest.approx(guess, rel=0.05), key


def _train(tmp_path, workdir, *extra):
  return subprocess.run([sys.executable, "-m", "dashjax.cli.train", f"--config={TINY}", f"--workdir={workdir}",
                         "--noprogress", "--config.train.checkpoint_every=1", *extra], cwd=tmp_path,
                        capture_output=True, text=True, timeout=600)


def test_auto_sizes_through_dashjax_train_and_a_resume_keeps_the_runs_own(tmp_path):
  auto = ["--config.sampling.batch_size=auto", "--config.train.micro_batch_size=auto"]
  # R = 2 prompts x 4 samples = 8 rows: 2 sampler sizes x 4 micro-batches
  run = _train(tmp_path, tmp_path / "a", "--config.train.num_steps=1", "--config.rl.prompts_per_step=2", *auto)
  assert run.returncode == 0, run.stderr[-3000:]
  plan = json.loads((tmp_path / "a" / "plan.json").read_text())
  cfg = json.loads((tmp_path / "a" / "config.json").read_text())
  chosen = (cfg["sampling"]["batch_size"], cfg["train"]["micro_batch_size"])
  assert chosen == (plan["choice"]["sampling.batch_size"], plan["choice"]["train.micro_batch_size"])
  assert plan["source"] == "measured" and len(plan["candidates"]) == 8
  assert min(r["update_s"] for r in plan["candidates"] if r["fits"]) == pytest.approx(
      next(r["update_s"] for r in plan["candidates"]
           if (r["sampling.batch_size"], r["train.micro_batch_size"]) == chosen))
  assert "<- chosen" in run.stderr

  # A run started with set sizes and continued with `auto` keeps its own sizes: no new plan.
  run = _train(tmp_path, tmp_path / "b", "--config.train.num_steps=1", "--config.sampling.batch_size=4",
               "--config.train.micro_batch_size=1")
  assert run.returncode == 0, run.stderr[-3000:]
  run = _train(tmp_path, tmp_path / "b", "--config.train.num_steps=2", "--resume", *auto)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "sampling.batch_size=4, train.micro_batch_size=1" in run.stderr and "<- chosen" not in run.stderr
  cfg = json.loads((tmp_path / "b" / "config.json").read_text())
  assert (cfg["sampling"]["batch_size"], cfg["train"]["micro_batch_size"]) == (4, 1)
  assert not (tmp_path / "b" / "plan.json").exists()
  steps = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert [s["step"] for s in steps] == [1, 2] and steps[1]["sampler_calls"] == 4  # 16 rows, 4 per call
