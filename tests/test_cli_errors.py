"""Issue 9 items 3, 6, 8, 9: the command-line tools fail with one line (`PROG: error: ...`, no traceback, non-zero
exit), before the model loads where the input allows; evaluation never touches a run's training logs."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f"{ROOT}/configs/tiny.py"
sys.path.insert(0, os.path.join(ROOT, "configs"))

import tiny  # noqa: E402

from dashjax.train.trainer import RewardError, Trainer  # noqa: E402


def _run(module, *args, timeout=300):
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", f"dashjax.cli.{module}", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)
  return proc, time.perf_counter() - t0


def _one_error_line(proc, prog):
  """The single `prog: error:` line; nothing else that looks like a traceback."""
  assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f"{prog}: error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "meta_path" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      with open(os.path.join(dirpath, n), "rb") as f:
        out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
  return out


@pytest.mark.parametrize("args,expected", [
    (["--config.rl.algoo=dash"], "--config.rl.algoo: no such config field; did you mean 'algo'?"),
    (["--config.train.learning_rate=abc"], "could not convert string to float: 'abc'"),
    (["--workdirr=x"], "Unknown command line flag 'workdirr'"),
    (["--config.model.source=/no/such/model.gguf"], "model.source='/no/such/model.gguf' does not exist"),
    (["--config.sampling.top_p=0"], "sampling.top_p=0.0 must be in (0, 1]"),
    (["--config.reward.fn=gym"], "reward.fn='gym' scores reasoning-gym items, but data.source='file'"),
])
def test_train_config_errors_are_one_line_before_loading(tmp_path, args, expected):
  workdir = tmp_path / "run"
  proc, seconds = _run("train", f"--config={TINY}", f"--workdir={workdir}", *args)
  line = _one_error_line(proc, "dashjax-train")
  assert expected in line, line
  assert proc.returncode == 2 and not workdir.exists()
  print(f"{args}: {seconds:.1f} s: {line}")


def test_config_file_problems_are_one_line(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config():\n  raise ValueError('no such dataset size')\n")
  for config, expected in ((tmp_path / "missing.py", "cannot load the config file"),
                           (broken, "SyntaxError"), (raising, "ValueError: no such dataset size")):
    proc, _ = _run("train", f"--config={config}", f"--workdir={tmp_path / 'run'}")
    line = _one_error_line(proc, "dashjax-train")
    assert expected in line and str(config.name) in line or expected in line, line
  proc, _ = _run("train", f"--workdir={tmp_path / 'run'}")
  assert "--config is required" in _one_error_line(proc, "dashjax-train")


def test_unusable_workdir_and_full_disk_are_one_line(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  proc, _ = _run("train", f"--config={TINY}", f"--workdir={afile}/run")
  assert f"--workdir {afile}/run is not writable: Not a directory" in _one_error_line(proc, "dashjax-train")
  # A full disk: every write into the workdir's config.json fails with ENOSPC (/dev/full).
  full = tmp_path / "full"
  full.mkdir()
  os.symlink("/dev/full", full / "config.json")
  proc, _ = _run("train", f"--config={TINY}", f"--workdir={full}")
  line = _one_error_line(proc, "dashjax-train")
  assert "no space left on device" in line and "--verbose" in line, line
  verbose, _ = _run("train", f"--config={TINY}", f"--workdir={full}", "--verbose")
  assert "Traceback" in verbose.stderr and "No space left on device" in verbose.stderr


def test_full_disk_mid_run_is_one_line(tmp_path):
  """ENOSPC after the model loaded and training ran (the held-out log is on a full disk)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink("/dev/full", workdir / "eval.jsonl")
  proc, _ = _run("train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.num_steps=1",
                 "--config.eval.after=true", "--progress=false")
  line = _one_error_line(proc, "dashjax-train")
  assert "no space left on device" in line, line
  log = line.split("traceback: ")[1].split(";")[0]
  with open(log) as f:
    assert "No space left on device" in f.read()


def _trained_run(path, steps=2):
  proc, _ = _run("train", f"--config={TINY}", f"--workdir={path}", f"--config.train.num_steps={steps}",
                 "--config.train.checkpoint_every=1", "--progress=false")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return str(path)


def test_eval_never_changes_training_logs(tmp_path):
  run = _trained_run(tmp_path / "run")
  with open(os.path.join(run, "metrics.jsonl"), "a") as f:  # as a run killed at step 3, after checkpoint 2
    f.write(json.dumps({"step": 3, "reward_mean": 0.25}) + "\n")
  before = _files(run)
  proc, _ = _run("eval", f"--config={TINY}", f"--workdir={run}", "--config.eval.num_prompts=4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "evaluated checkpoint step 2" in proc.stdout
  after = _files(run)
  assert set(after) - set(before) == {"eval-step2.json"}
  assert {k: v for k, v in after.items() if k in before} == before  # metrics.jsonl still has step 3
  assert json.loads(after["eval-step2.json"])["step"] == 2

  # Logs but no checkpoint (killed before its first one): the initial model, the logs untouched.
  logs_only = tmp_path / "logs_only"
  logs_only.mkdir()
  (logs_only / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
  proc, _ = _run("eval", f"--config={TINY}", f"--workdir={logs_only}", "--config.eval.num_prompts=4")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "the initial model (the run has no checkpoint)" in proc.stdout
  assert sorted(os.listdir(logs_only)) == ["eval-initial.json", "metrics.jsonl"]
  assert (logs_only / "metrics.jsonl").read_text() == '{"step": 1, "reward_mean": 0.5}\n'


def test_eval_argument_errors(tmp_path):
  proc, _ = _run("eval", f"--config={TINY}", f"--workdir={tmp_path / 'missing'}")
  assert "does not exist" in _one_error_line(proc, "dashjax-eval")
  assert not (tmp_path / "missing").exists()
  proc, _ = _run("eval", f"--workdir={tmp_path}")
  assert "--config is required" in _one_error_line(proc, "dashjax-eval")


@pytest.mark.parametrize("args,expected", [
    (["--samples", "0"], "--samples=0 must be >= 1"),
    (["--samples", "3"], "--samples=3 with --temperature=0"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0 must be >= 1"),
    (["--top-p", "1.5", "--temperature", "1"], "--top-p=1.5 must be in (0, 1]"),
    (["--top-k", "-2", "--temperature", "1"], "--top-k=-2 must be >= 0"),
    (["--temperature", "-1"], "--temperature=-1.0 must be >= 0"),
    (["--model", "/no/such/dir/model.gguf"], "--model='/no/such/dir/model.gguf' does not exist"),
])
def test_generate_checks_arguments_before_loading(args, expected):
  proc, _ = _run("generate", *args)
  line = _one_error_line(proc, "dashjax-generate")
  assert expected in line, line
  assert "loaded" not in proc.stdout, proc.stdout


def test_scorer_errors_are_counted_and_stop_a_run_that_scores_nothing(tmp_path):
  c = tiny.get_config()
  c.reward.fn = "json:loads"  # importable and callable, but raises TypeError on (completion, target)
  c.train.num_steps = 3
  trainer = Trainer(c, str(tmp_path / "run"))
  try:
    with pytest.raises(RewardError, match=r"^step 1: reward.fn='json:loads' raised on 16 completions .*first "
                                          r"error: TypeError: .*loads\(\)"):
      trainer.run(progress=False)
    assert trainer.checkpointer.latest_step() is None
  finally:
    trainer.close()
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [(r["step"], r["reward_errors"]) for r in rows] == [(1, 16)]


def test_fuzz_counts_a_clear_error_only_with_status_2_and_no_traceback_log():
  """benchmarks/fuzz_cli.py: the unexpected-error path (exit 1, a traceback log named) is an internal error, not a
  clear one, even though it prints one line."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  from fuzz_cli import classify

  def proc(rc, err):
    return subprocess.CompletedProcess([], rc, "", err)

  line = "dashjax-train: error: sampling.batch_size=6 must be a multiple of rl.samples_per_prompt=4\n"
  assert classify(proc(2, line), "dashjax-train", False) == "one_line_error"
  assert classify(proc(1, line), "dashjax-train", False) == "internal_error"
  logged = "dashjax-train: error: KeyError: 'x' (traceback: /tmp/dashjax-train-error.log; --verbose prints it)\n"
  assert classify(proc(2, logged), "dashjax-train", False) == "internal_error"
  assert classify(proc(1, logged), "dashjax-train", False) == "internal_error"
  assert classify(proc(2, "Traceback (most recent call last):\n" + line), "dashjax-train", False) == "raw_traceback"
  assert classify(proc(0, ""), "dashjax-train", False) == "silent_run"


def test_a_data_field_no_row_has_is_an_input_error(tmp_path, capsys):
  """Once reported through the unexpected path (a KeyError: exit 1 and a traceback log); now exit 2, one line."""
  from dashjax.cli.errors import report
  from dashjax.data.tables import file_examples

  path = tmp_path / "rows.jsonl"
  path.write_text('{"question": "q", "answer": "a"}\n')
  with pytest.raises(KeyError) as err:  # still a KeyError for callers that catch one
    file_examples(str(path))
  assert report("dashjax-train", err.value, verbose=False) == 2
  line = capsys.readouterr().err
  assert line.count("\n") == 1 and "(traceback:" not in line and "has no problem field 'problem'" in line, line
