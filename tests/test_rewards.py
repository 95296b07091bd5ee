"""Rewards: answer extraction, math equivalence, reasoning-gym scoring, and the worker pool's hard timeout."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import reasoning_gym

from dashjax.rewards import (RewardPool, answers_match, extract_answer, gym_reward, math_reward, normalize_answer,
                             register_scorer)

HANG = "<<hang>>"


def _hang_scorer(completion, target):
  """Test-only scorer: never returns for the HANG input, like sympy stuck in C code; math_reward otherwise."""
  if completion == HANG:
    time.sleep(600)
  return math_reward(completion, target)


register_scorer("test_hang", _hang_scorer)


@pytest.mark.parametrize("text,expected", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),  # last box wins
    ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),  # nested braces
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$", "5"),  # TeX's brace-less form
    ("\\boxed{3} ... and finally \\boxed{4", "3"),  # truncated last box does not count
    ("\\boxed{} 12", "12"),  # empty box does not count
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("<answer>41</answer>", "41"),
    ("<Answer> 3 </ANSWER> ... <answer>4</answer> <answer>5", "4"),  # last closed tag
    ("The answer is: 5 - 3 = 2", "2"),  # equation chain -> last side
    ("**Answer:** 42 apples", "42"),  # markdown + units
    ("The answer is 2. Let me double check 3 + 4 = 7.", "2"),
    ("The answer is\n  12", "12"),  # answer on the next line
    ("the answer is x = 5", "5"),
    ("5 - 3 = 2", "2"),  # last number
    ("It costs $1,234.", "1,234"),  # thousands separators
    ("so we get -3.", "-3"),  # negative
    ("that leaves 5-3", "3"),  # a binary minus is not a sign
    ("\u22124", "-4"),  # Unicode minus
    ("about 0.75 of them", "0.75"),
    ("so 3/4 of the cake", "3/4"),
    ("which equals \\frac{3}{4}", "\\frac{3}{4}"),
    ("1,2345", "2345"),  # not a thousands group
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


def test_extraction_and_matching_stay_fast_on_adversarial_text():
  # Inputs that make naive regexes or brace matching quadratic; scoring must stay ~linear in the text length.
  texts = ["\\boxed{" * 5000, "<answer>" * 5000 + "7", "1 " * 5000 + "x1", "1" * 20000 + "x", "{" * 5000 + "}",
           "answer: " * 3000]
  # A hang guard, not a time budget (that is benchmarks' job): quadratic scanning of these texts takes minutes.
  import signal

  def hung(*_):
    raise TimeoutError("answer extraction did not finish within 60 s: quadratic on adversarial text")

  previous = signal.signal(signal.SIGALRM, hung)
  signal.alarm(60)
  try:
    for text in texts:
      extract_answer(text)
      extract_answer(text, mode="text")
      answers_match(text, "5")
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_extract_answer_text_mode():
  assert extract_answer("Reasoning...\nnoremopyh", mode="text") == "noremopyh"
  assert extract_answer("So the answer is: Victoria is a knight.", mode="text") == "Victoria is a knight"
  assert extract_answer("The answer is: 5 - 3 = 2", mode="text") == "5 - 3 = 2"  # verbatim
  assert extract_answer("<answer>**yes**</answer> bye", mode="text") == "yes"


@pytest.mark.parametrize("raw,expected", [
    ("$1,234$", "1234"), ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\tfrac12", "\\frac{1}{2}"), ("x = 5", "5"),
    ("18 \\text{ dollars}", "18"), ("\\left( 1, 2 \\right)", "(1,2)"), ("(B)", "B"), ("50\\%", "50"),
    (".5", "0.5"), ("#### 72", "72"), ("\\boxed{72}", "72"), ("90^\\circ", "90"), ("\\sqrt3", "\\sqrt{3}"),
    ("1{,}234", "1234"), ("3.", "3"), ("\\text{(A)}", "A"), ("\\frac{1}{2} \\text{ cm}", "\\frac{1}{2}"),
])
def test_normalize_answer(raw, expected):
  assert normalize_answer(raw) == expected


@pytest.mark.parametrize("pred,gold", [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac{1}{2}"), ("1,234", "1234"), ("72", "#### 72"), ("72.0", "72"),
    ("3/4", "0.75"), ("\\sqrt{8}", "2\\sqrt{2}"), ("x+1", "1+x"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("10^{3}", "1000"), ("\\{1,2\\}", "\\{2,1\\}"), ("0.3333333", "1/3"), ("A", "(a)"),
])
def test_answers_match_equivalent(pred, gold):
  assert answers_match(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("73", "72"), ("-3", "3"), ("0.333", "1/3"), ("-131073013", "-131073014"), ("0.0000001", "0"),
    ("2\\pi", "\\pi"), ("x+2", "x+1"), ("yes", "no"), (None, "1"), ("", "1"),
])
def test_answers_match_different(pred, gold):
  assert not answers_match(pred, gold)


def test_math_reward():
  assert math_reward("48/2 = 24 in May, so 48 + 24 = 72.\n#### 72", "72") == 1.0
  assert math_reward("The final answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5") == 1.0
  assert math_reward("The final answer is $\\boxed{\\dfrac{1}{3}}$.", "0.5") == 0.0
  assert math_reward("I am not sure.", "72") == 0.0


@pytest.fixture(scope="module")
def arithmetic_items():
  return list(reasoning_gym.create_dataset("basic_arithmetic", size=6, seed=7))


def _natural_completions(entry, answer):
  expr = entry["metadata"]["expression"]
  return [f"{expr} = {answer}", f"The answer is {answer}.", f"\\boxed{{{answer}}}",
          f"Let me compute. {expr} gives {answer}", f"<answer>{answer}</answer>"]


def test_gym_reward_basic_arithmetic(arithmetic_items):
  for entry in arithmetic_items:
    gold = int(entry["answer"])
    for completion in _natural_completions(entry, gold):
      assert gym_reward(completion, entry) == 1.0, completion
    for completion in _natural_completions(entry, gold + 1) + ["I don't know.", f"1{gold}"]:
      assert gym_reward(completion, entry) == 0.0, completion
    # Why extraction matters: the task's own scorer gives little or nothing for the raw text.
    raw = reasoning_gym.get_score_answer_fn("basic_arithmetic")(f"{entry['metadata']['expression']} = {gold}",
                                                                 entry)
    assert raw < 0.5


def test_gym_reward_text_task_uses_gym_scorer():
  entry = reasoning_gym.create_dataset("spell_backward", size=1, seed=0)[0]
  word = entry["answer"]
  assert gym_reward(f"Reversing letter by letter:\n{word}", entry) == 1.0
  assert gym_reward(f"<answer>{word}</answer>", entry) == 1.0
  # A wrong answer gets exactly the task scorer's value for it, partial credit included (authoritative here).
  wrong = word[::-1] + "x"
  own = reasoning_gym.get_score_answer_fn("spell_backward")(wrong, entry)
  assert gym_reward(f"<answer>{wrong}</answer>", entry) == own < 1.0


@pytest.fixture(scope="module")
def pool():
  with RewardPool(num_workers=2, timeout_s=1.5) as p:
    p.wait_ready()
    yield p


def _mixed_batch(arithmetic_items, n):
  completions, targets = [], []
  for k in range(n):
    entry = arithmetic_items[k % len(arithmetic_items)]
    answer = int(entry["answer"]) + (k % 3 == 0)  # a third wrong
    completions.append(_natural_completions(entry, answer)[k % 5])
    targets.append(entry)
  return completions, targets


def test_pool_matches_in_process(pool, arithmetic_items):
  completions, targets = _mixed_batch(arithmetic_items, 64)
  got = pool.score("gym", completions, targets)
  want = np.array([gym_reward(c, t) for c, t in zip(completions, targets)], np.float32)
  assert got.rewards.dtype == np.float32 and got.rewards.shape == (64,)
  np.testing.assert_array_equal(got.rewards, want)
  assert not got.timed_out.any() and not got.errors.any()
  assert got.rewards.sum() == 64 - 22  # k % 3 == 0 for 22 of 64

  math_completions = ["\\boxed{\\frac{1}{2}}", "The answer is 0.5", "#### 72", "x = \\boxed{2\\sqrt{2}}", "7"]
  math_golds = ["0.5", "\\frac12", "72", "\\sqrt{8}", "8"]
  got = pool.score("math", math_completions, math_golds)
  np.testing.assert_array_equal(got.rewards, [1, 1, 1, 1, 0])
  with RewardPool(num_workers=0) as local:
    np.testing.assert_array_equal(local.score("math", math_completions, math_golds).rewards, got.rewards)


def test_pool_timeout_holds_on_hanging_input(pool):
  completions = ["\\boxed{1}", "The answer is 2.", HANG, "#### 4", "5", "\\boxed{6}", "7 apples", "wrong: 9"]
  golds = ["1", "2", "3", "4", "5", "6", "7", "8"]
  # Both workers import the test scorer first (not charged to any sample), so the wall time below is the pool's.
  assert pool.score("test_hang", ["1", "2", "3", "4"], ["1", "2", "3", "5"]).rewards.tolist() == [1, 1, 1, 0]
  restarts = pool.restarts
  t0 = time.perf_counter()
  batch = pool.score("test_hang", completions, golds)
  wall = time.perf_counter() - t0
  print(f"hanging-input batch: {wall:.2f} s wall for timeout_s={pool.timeout_s}")
  assert wall < pool.timeout_s + 1.0
  assert batch.timed_out.tolist() == [c == HANG for c in completions]
  np.testing.assert_array_equal(batch.rewards, [1, 1, 0, 1, 1, 1, 1, 0])
  assert pool.restarts == restarts + 1  # the hung worker was killed and replaced

  # Two hangs: each costs at most one timeout, and the pool keeps working afterwards.
  t0 = time.perf_counter()
  batch = pool.score("test_hang", [HANG, "1", HANG, "2"], ["0", "1", "0", "2"])
  assert time.perf_counter() - t0 < 2 * pool.timeout_s + 1.0
  assert batch.timed_out.tolist() == [True, False, True, False]
  np.testing.assert_array_equal(batch.rewards, [0, 1, 0, 1])
  batch = pool.score("math", ["\\boxed{3}"] * 8, ["3"] * 8)
  assert batch.rewards.tolist() == [1.0] * 8 and batch.num_timed_out == 0


def test_pool_decides_real_sympy_blowup_without_timeout(pool):
  # 9^(9^9) used to send sympy into a computation far past any timeout, which only the pool could cut; math.py's
  # size guard now decides it (0) before sympy evaluates anything (more inputs in test_reward_bounds.py).
  restarts = pool.restarts
  batch = pool.score("math", ["\\boxed{9^{9^{9}}}", "\\boxed{5}"], ["5", "5"])
  assert batch.timed_out.tolist() == [False, False] and pool.restarts == restarts  # no worker had to be killed
  np.testing.assert_array_equal(batch.rewards, [0, 1])


def test_pool_throughput_256(pool, arithmetic_items):
  completions, targets = _mixed_batch(arithmetic_items, 256)
  completions = [("Let me think step by step. " * 40) + c for c in completions]  # ~1 KB of reasoning each
  batch = pool.score("gym", completions, targets)
  print(f"256 gym completions: {batch.seconds * 1e3:.1f} ms")  # a figure for the log; budgets live in benchmarks
  assert not batch.timed_out.any()
  np.testing.assert_array_equal(batch.rewards, [float(k % 3 != 0) for k in range(256)])  # a third wrong


def test_register_scorer_needs_importable_function():
  def local(completion, target):
    return 0.0

  with pytest.raises(ValueError):
    register_scorer("local", local)
  with pytest.raises(ValueError):
    register_scorer("bad", "no_colon_path")


def test_pool_errors_and_validation(pool):
  with pytest.raises(KeyError):
    pool.score("no-such-scorer", ["1"], ["1"])
  with pytest.raises(ValueError):
    pool.score("math", ["1", "2"], ["1"])
  batch = pool.score("gym", ["1"], [{"answer": "x"}])  # not a reasoning-gym item: an error, scored 0
  assert batch.rewards.tolist() == [0.0] and batch.errors.tolist() == [True]
  assert batch.first_error.startswith("ValueError: reward.fn='gym' needs reasoning-gym items")
  batch = pool.score("math", [], [])
  assert batch.rewards.shape == (0,)
  # A scorer that cannot be imported is a configuration error, raised rather than scored 0; the pool survives it.
  with pytest.raises(RuntimeError, match="cannot load"):
    pool.score("no_such_module_xyz:fn", ["1"], ["1"])
  assert pool.score("math", ["\\boxed{1}"], ["1"]).rewards.tolist() == [1.0]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, just not reaped yet
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def _wait_dead(pids, seconds=10.0):
  deadline = time.monotonic() + seconds
  while any(_alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(0.05)
  return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc")
def test_dropped_pool_stops_its_workers(pool):
  # The finalizer that runs here when the pool is collected is the one that runs at interpreter exit.
  extra = RewardPool(num_workers=1)
  extra.wait_ready()
  pids = [w.proc.pid for w in extra._workers]
  del extra
  assert _wait_dead(pids)


_CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, threading, time
    from dashjax.rewards import RewardPool, register_scorer

    if __name__ == "__main__":
      register_scorer("test_hang", "test_rewards:_hang_scorer")
      pool = RewardPool(num_workers=1, timeout_s=60.0)
      pool.wait_ready()
      print(pool._workers[0].proc.pid, flush=True)
      threading.Thread(target=pool.score, args=("test_hang", [%r], ["0"]), daemon=True).start()
      time.sleep(1.0)  # the worker is now stuck in the hanging sample
      os.kill(os.getpid(), signal.SIGKILL)
""" % HANG)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc and PR_SET_PDEATHSIG")
def test_no_orphan_worker_after_trainer_crash(tmp_path):
  """A trainer SIGKILLed while its worker hangs (no finalizer, no atexit) leaves no worker behind."""
  script = tmp_path / "crash.py"
  script.write_text(_CRASH_SCRIPT)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  # Output to a file: after a SIGKILL a pipe would stay open as long as any descendant lives.
  with open(tmp_path / "crash.out", "w+") as out:
    proc = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.wait(timeout=120)
    out.seek(0)
    log = out.read()
  assert proc.returncode == -signal.SIGKILL, log
  pids = [int(line) for line in log.splitlines() if line.strip().isdigit()]
  assert pids, log
  assert _wait_dead(pids), f"worker {pids} outlived its trainer"
