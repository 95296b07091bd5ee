"""Runs are never mixed or lost: used workdirs, --resume/--overwrite, keep_checkpoints, non-finite configs and steps."""

import glob
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import tiny  # noqa: E402

from dashjax.config import ConfigError, validate  # noqa: E402
from dashjax.train.metrics import read_metrics  # noqa: E402
from dashjax.train.trainer import NonFiniteError, Trainer  # noqa: E402


def _snapshot(root):
  """Every path under root (and root's siblings) with size, mtime and content: 'nothing on disk changed'."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(os.path.dirname(str(root))):
    for name in dirnames:
      out[os.path.join(dirpath, name)] = "dir"
    for name in filenames:
      p = os.path.join(dirpath, name)
      st = os.stat(p)
      with open(p, "rb") as f:
        out[p] = (st.st_size, st.st_mtime_ns, f.read())
  return out


def _used_workdir(path, checkpoint_steps=(1, 2)):
  """A workdir as a finished run leaves it (checkpoint folders stand in for Orbax's)."""
  os.makedirs(path)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(f'{{"step": {s}, "reward_mean": 0.5}}\n' for s in (1, 2))
  for s in checkpoint_steps:
    os.makedirs(os.path.join(path, "checkpoints", str(s)))
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write("{}")
  return str(path)


def _train(workdir, *args):
  cmd = [sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py", f"--workdir={workdir}",
         "--config.train.num_steps=1", "--progress=false", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("dashjax-train: error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize("case", ["used_without_resume", "resume_without_checkpoint", "resume_missing_workdir",
                                  "resume_and_overwrite"])
def test_cli_refuses_before_loading_and_changes_nothing(tmp_path, case):
  workdir = str(tmp_path / "run")
  if case == "used_without_resume":
    _used_workdir(workdir)
    args, expected = [], [f"{workdir} already holds a run (metrics.jsonl, checkpoints up to step 2)",
                          "continue it with --resume", f"--overwrite (moves the old run to {workdir}.replaced-"]
  elif case == "resume_without_checkpoint":  # e.g. a run killed before its first checkpoint
    _used_workdir(workdir, checkpoint_steps=())
    args, expected = ["--resume"], ["--resume", f"{workdir} holds no checkpoint to resume from", "--overwrite"]
  elif case == "resume_missing_workdir":
    args, expected = ["--resume"], [f"{workdir} holds no checkpoint to resume from", "without --resume"]
  else:
    _used_workdir(workdir)
    args, expected = ["--resume", "--overwrite"], ["--resume and --overwrite"]
  before = _snapshot(workdir)
  proc = _train(workdir, *args)
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  line = _error_line(proc)
  for text in expected:
    assert text in line, line
  assert _snapshot(workdir) == before  # metrics.jsonl not truncated, nothing created, nothing moved


def test_overwrite_moves_the_old_run_aside_and_trains(tmp_path):
  workdir = _used_workdir(tmp_path / "run")
  old = _snapshot(workdir)
  proc = _train(workdir, "--overwrite")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  moved = glob.glob(f"{workdir}.replaced-*")
  assert len(moved) == 1 and f"moved the old run to {moved[0]}" in proc.stderr
  now = _snapshot(workdir)
  old_run = {p: v for p, v in old.items() if p.startswith(workdir + os.sep)}
  assert {p.replace(moved[0], workdir): v for p, v in now.items() if p.startswith(moved[0] + os.sep)} == old_run
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == [1]


@pytest.mark.parametrize("field,value,text", [
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0 must be >= 1"),
    ("train.learning_rate", float("nan"), "train.learning_rate=nan must be a finite number"),
    ("train.max_grad_norm", float("inf"), "train.max_grad_norm=inf must be a finite number"),
    ("rl.filter_threshold", -float("inf"), "rl.filter_threshold=-inf must be a finite number"),
])
def test_bad_values_are_config_errors_naming_the_field(field, value, text):
  c = tiny.get_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ConfigError, match=text.replace(".", r"\.").replace("+", r"\+")):
    validate(c, num_devices=1)


def test_non_finite_step_stops_with_the_last_good_checkpoint_intact(tmp_path):
  c = tiny.get_config()
  c.train.num_steps, c.train.checkpoint_every = 5, 1
  workdir = str(tmp_path / "run")
  trainer = Trainer(c, workdir)
  real_step = trainer.train_step

  def step_with_nan_at_3():
    m = real_step()
    if m["step"] == 3:
      m["grad_norm"] = float("nan")
    return m

  trainer.train_step = step_with_nan_at_3
  try:
    with pytest.raises(NonFiniteError, match=r"^step 3 produced a non-finite grad_norm=nan; .*checkpoint: step 2"):
      trainer.run(progress=False)
    assert trainer.checkpointer.latest_step() == 2
    assert trainer.checkpointer.manager.all_steps() == [1, 2]
  finally:
    trainer.close()
  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["grad_norm"]) for r in rows)
  # The last good checkpoint restores (finite weights at step 2).
  resumed = Trainer(c, workdir, resume=True)
  try:
    assert resumed.step == 2
  finally:
    resumed.close()
