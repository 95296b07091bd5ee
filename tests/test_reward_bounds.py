"""Bounds on scoring: the size guard for huge answers, the in-process deadline, and scorer errors with messages."""

import signal
import threading
import time

import numpy as np
import pytest
import reasoning_gym

import dashjax.rewards.gym as rgym
import dashjax.rewards.math as rmath
from dashjax.rewards import RewardPool, answers_match, gym_reward, math_reward, register_scorer
from dashjax.rewards.bounds import Deadline, ScoreTimeout

SPIN = "<<spin>>"
SPIN_CAP_S = 30.0  # "forever" for a test: a broken alarm fails the test instead of hanging it


def _spin_scorer(completion, target):
  """Test-only: for SPIN, goes through math_verify (parse and verify: they must not cancel the pool's timer),
  then loops in Python, which only the in-process alarm can cut. math_reward otherwise."""
  if completion != SPIN:
    return math_reward(completion, target)
  answers_match.cache_clear()
  rmath._mv_parse.cache_clear()
  reward = math_reward("\\boxed{x^{2}+2x+1}", "(x+1)^2")  # equal values at the probe point: verify decides
  end = time.monotonic() + SPIN_CAP_S
  while time.monotonic() < end:
    pass
  return reward


def _raising_scorer(completion, target):
  if completion == "raise":
    raise ZeroDivisionError("bad sample\nsecond line " + "x" * 1000)
  if completion == "nan":
    return float("nan")
  return 1.0


register_scorer("test_spin", _spin_scorer)
register_scorer("test_raise", _raising_scorer)

# Each ran for seconds (math_verify's 2 s alarm) or past 25 s (evalf, or the parser, computing a huge number).
ADVERSARIAL = [
    ("\\boxed{9^{9^{9^{9}}}}", "1"),
    ("\\boxed{9^{9^{9}}}", "5"),
    ("\\boxed{99999999999!}", "1"),
    ("\\boxed{10^{10^{10}}}", "1"),
    ("\\boxed{(10^{100})!}", "1"),
    ("\\boxed{\\binom{10^{9}}{10^{8}}}", "1"),
    ("\\boxed{9^{9^{9}} - 9^{9^{9}}}", "0"),  # equal, but only sympy could show it: "not shown equal"
    ("\\boxed{\\sqrt{10^{10^{10}}}}", "x+1"),
    ("\\boxed{e^{10^{10}}}", "1"),
    ("\\boxed{\\sum_{k=1}^{10^{10}} k}", "1"),
    ("\\boxed{x^{10^{10}}}", "x+1"),
    ("\\boxed{\\frac{1}{2^{10^{10}}}}", "\\frac{1}{2}"),
    ("\\boxed{(x+1)^{10^{6}}}", "x+1"),
    ("\\boxed{\\prod_{k=1}^{10^{9}} k}", "1"),
    ("\\boxed{(-9)^{9^{9}}}", "\\frac{1}{2}"),
    ("\\boxed{1.5^{10^{10}}}", "\\frac{1}{2}"),
    ("\\boxed{\\left(1+\\frac{1}{10^{10}}\\right)^{10^{10}}}", "e"),
    ("\\boxed{x = 9^{9^{9}}}", "x = 1"),
    ("\\boxed{\\{9^{9^{9}}, 1\\}}", "\\{1\\}"),
    ("\\boxed{\\frac{9^{9^{9}}}{9^{9^{9}}}}", "1"),
    ("\\boxed{10^{10^{10}}!}", "x+1"),
    ("\\boxed{\\sqrt[10^{10}]{2}}", "1"),
    ("\\boxed{\\sin(10^{10^{10}})}", "0"),
    ("\\boxed{\\left(9^{9^{9}}, 10^{10^{10}}\\right)}", "(1, 2)"),
    ("\\boxed{\\gcd(10^{10^{10}}, 3)}", "1"),  # the parser itself computes gcd/lcm/binomial/Gamma
    ("\\boxed{\\lcm(10^{10^{10}}, 3)}", "x+1"),
    ("\\boxed{\\binom{99999999999}{49999999999}}", "\\frac{1}{2}"),
    ("\\boxed{\\Gamma(99999999999)}", "1"),
]
BIG_BUT_ALLOWED = [("\\boxed{2^{2^{2^{2^{2}}}}}", "1"), ("\\boxed{2^{300000}}", "2^{300000}+1")]  # <= 1e5 digits
LEGIT = [
    ("\\boxed{2^{10}}", "1024", 1.0), ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0), ("\\boxed{2^{10}}", "1000", 0.0),
    ("\\boxed{2^{2^{2^{2}}}}", "65536", 1.0), ("\\boxed{10!}", "3628800", 1.0), ("\\boxed{\\gcd(12, 18)}", "6", 1.0),
    ("\\boxed{\\binom{2024}{2}}", "2047276", 1.0), ("\\boxed{\\sum_{k=1}^{100} k}", "5050", 1.0),
    ("\\boxed{9^{9^{9}}}", "9^{9^{9}}", 1.0), ("\\boxed{(x+1)^{50000}}", "(1+x)^{50000}", 1.0),
]


@pytest.mark.parametrize("completion,gold", ADVERSARIAL + BIG_BUT_ALLOWED)
def test_adversarial_math_reward_is_fast(completion, gold):
  t0 = time.perf_counter()
  assert math_reward(completion, gold) == 0.0
  assert time.perf_counter() - t0 < 3.0


def test_size_guard_decides_before_any_evaluation(monkeypatch):
  import math_verify

  def never(*args, **kwargs):
    raise AssertionError("reached numeric evaluation")

  monkeypatch.setattr(rmath, "_compare_at_a_point", never)
  monkeypatch.setattr(math_verify, "verify", never)
  answers_match.cache_clear()
  for completion, gold in ADVERSARIAL:
    assert math_reward(completion, gold) == 0.0, completion
  answers_match.cache_clear()


@pytest.mark.parametrize("completion,gold,reward", LEGIT)
def test_legit_answers_still_scored(completion, gold, reward):
  assert math_reward(completion, gold) == reward


def test_in_process_pool_is_bounded_on_adversarial_inputs():
  completions = [c for c, _ in ADVERSARIAL + BIG_BUT_ALLOWED] + [c for c, _, _ in LEGIT]
  golds = [g for _, g in ADVERSARIAL + BIG_BUT_ALLOWED] + [g for _, g, _ in LEGIT]
  want = [0.0] * len(ADVERSARIAL + BIG_BUT_ALLOWED) + [r for _, _, r in LEGIT]
  answers_match.cache_clear()
  with RewardPool(num_workers=0, timeout_s=2.0) as pool:
    for completion, gold, reward in zip(completions, golds, want):
      batch = pool.score("math", [completion], [gold])
      assert batch.seconds < 3.0, completion
      assert batch.rewards.tolist() == [reward], completion
      assert batch.num_errors == 0


def test_in_process_alarm_cuts_a_python_loop():
  assert math_reward("\\boxed{x^{2}+2x+1}", "(x+1)^2") == 1.0  # warm: the spinning sample's verify takes ms
  before = signal.getsignal(signal.SIGALRM)
  with RewardPool(num_workers=0, timeout_s=1.5) as pool:
    t0 = time.perf_counter()
    batch = pool.score("test_spin", ["\\boxed{1}", SPIN, "\\boxed{3}"], ["1", "2", "3"])
    wall = time.perf_counter() - t0
  print(f"spinning sample cut after {wall:.2f} s wall for timeout_s=1.5")
  assert batch.timed_out.tolist() == [False, True, False]
  assert batch.rewards.tolist() == [1.0, 0.0, 1.0]
  assert batch.num_errors == 0 and batch.first_error is None
  assert 1.5 <= wall < 3.0
  assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_deadline_restores_an_outer_timer():
  fired = []
  old = signal.signal(signal.SIGALRM, lambda *a: fired.append(time.monotonic()))
  try:
    signal.setitimer(signal.ITIMER_REAL, 3.0)
    with RewardPool(num_workers=0, timeout_s=0.5) as pool:
      assert pool.score("test_spin", [SPIN], ["0"]).timed_out.tolist() == [True]
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 1.5 < left < 2.6 and not fired  # re-armed with what was left, not fired inside
    # math_verify under a pending timer gets no alarm of its own, whose alarm(0) would cancel the timer.
    answers_match.cache_clear()
    rmath._mv_parse.cache_clear()
    assert math_reward("\\boxed{x^{2}+2x+1}", "(x+1)^2") == 1.0
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_deadline_is_off_the_main_thread_only_a_no_op():
  result = []

  def body():
    with Deadline(0.05) as armed:
      time.sleep(0.2)  # would be cut in the main thread
      result.append(armed)

  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert result == [False]
  with pytest.raises(ScoreTimeout):
    with Deadline(0.05) as armed:
      assert armed
      time.sleep(2.0)


@pytest.mark.parametrize("workers", [0, 1])
def test_pool_counts_errors_with_first_message(workers):
  with RewardPool(num_workers=workers, timeout_s=10.0) as pool:
    batch = pool.score("test_raise", ["ok", "nan", "raise", "ok", "raise"], [None] * 5)
    assert batch.rewards.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert batch.errors.tolist() == [False, True, True, False, True]
    assert batch.num_errors == 3 and batch.num_timed_out == 0
    assert batch.first_error == "returned nan"  # the lowest index
    batch = pool.score("test_raise", ["ok", "raise"], [None] * 2)
    assert batch.first_error.startswith("ZeroDivisionError: bad sample second line xxx")
    assert len(batch.first_error) <= 300 and "\n" not in batch.first_error
    batch = pool.score("test_raise", ["ok"], [None])
    assert batch.num_errors == 0 and batch.first_error is None


def test_gym_on_a_non_gym_target_is_an_error(monkeypatch):
  file_row = {"question": "What is 70 + 2?", "answer": "72"}
  with pytest.raises(ValueError, match="use reward.fn='math'"):
    gym_reward("\\boxed{72}", file_row)
  entry = reasoning_gym.create_dataset("spell_backward", size=1, seed=0)[0]
  with RewardPool(num_workers=0) as pool:
    batch = pool.score("gym", ["\\boxed{72}", "\\boxed{71}", "72"], [file_row, file_row, "72"])
    assert batch.num_errors == 3 and batch.rewards.tolist() == [0.0] * 3
    assert "metadata.source_dataset" in batch.first_error and "['answer', 'question']" in batch.first_error
    batch = pool.score("gym", [f"<answer>{entry['answer']}</answer>", "<answer>x</answer>", ""], [entry] * 3)
    assert batch.num_errors == 0 and batch.rewards[0] == 1.0 and np.all(batch.rewards[1:] < 1.0)

    # A task scorer that chokes on a malformed answer: a wrong answer, not an error.
    def choke(answer, item):
      raise ValueError("cannot read the answer")

    monkeypatch.setattr(rgym, "_scorer", lambda task: choke)
    batch = pool.score("gym", ["<answer>{{((</answer>"], [entry])
    assert batch.num_errors == 0 and batch.rewards.tolist() == [0.0]
