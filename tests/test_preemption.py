"""Stops and restarts an operator meets: Ctrl-C checkpoints like SIGTERM, and a damaged latest checkpoint is named in
one line with the previous one offered, which then resumes (the damaged one set aside, not deleted)."""

import glob
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from configs_for_tests import tiny_config as _config  # noqa: E402

from dashjax.train.metrics import read_metrics  # noqa: E402
from dashjax.train.trainer import Trainer  # noqa: E402


def test_ctrl_c_checkpoints_after_the_current_step(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  trainer = Trainer(_config(**{"train.num_steps": 50}), workdir)
  metrics = os.path.join(workdir, "metrics.jsonl")

  def interrupt():
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and read_metrics(metrics)):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)

  threading.Thread(target=interrupt, daemon=True).start()
  try:
    summary = trainer.run(progress=False)  # a KeyboardInterrupt here would fail the test
  finally:
    trainer.close()
  assert summary["stopped_at"] == trainer.step < 50
  assert trainer.checkpointer.all_steps() == [trainer.step]
  assert "stopped by SIGINT" in capsys.readouterr().out
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the run


def _train(workdir, *args):
  cmd = [sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py", f"--workdir={workdir}",
         "--progress=false", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_damaged_latest_checkpoint_offers_the_previous_one(tmp_path):
  workdir = str(tmp_path / "run")
  trainer = Trainer(_config(**{"train.num_steps": 2, "train.checkpoint_every": 1}), workdir)
  trainer.run(progress=False)
  trainer.close()
  # Damage step 2 the way a bad disk or a partial copy would: its array data is garbage.
  data = [p for p in glob.glob(os.path.join(workdir, "checkpoints", "2", "state", "**", "*"), recursive=True)
          if os.path.isfile(p) and "/d/" in p]
  assert data
  for p in data:
    with open(p, "wb") as f:
      f.write(b"\0garbage")

  proc = _train(workdir, "--auto_resume", "--config.train.num_steps=3")
  lines = [l for l in proc.stderr.splitlines() if l.startswith("dashjax-train: error:")]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "checkpoint step 2" in lines[0] and "cannot be read" in lines[0]
  assert "--resume --resume_step=1" in lines[0]

  proc = _train(workdir, "--resume", "--resume_step=1", "--config.train.num_steps=3",
                "--config.train.checkpoint_every=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == [1, 2, 3]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints-set-aside")))[0].startswith("2-")  # kept, not lost
  assert sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()) == [2, 3]
