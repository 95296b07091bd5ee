"""Scoring one sample: its error message, and a time bound that works without a worker process to kill.

`Deadline(seconds)` bounds in-process scoring (`RewardPool(num_workers=0)`, and math.py's numeric probe): ITIMER_REAL
fires after `seconds` and the handler raises `ScoreTimeout`. Limits, by design of signals:
- only the main thread receives signals, so elsewhere `Deadline` arms nothing and the body runs unbounded;
- a handler runs between bytecodes, so one long C call (a huge big-int power) is only stopped when it returns:
  math.py refuses such inputs before evaluating anything (`_bounded`), and only killing a worker bounds the rest.
`ScoreTimeout` derives from BaseException so that `except Exception` in scorers, math_verify and sympy lets it
through; the timer re-fires every REFIRE_S in case a bare `except:` swallows it anyway.
The previous SIGALRM handler is restored on exit, and a timer that was pending on entry is re-armed with what is
left of it (it fires at once if it expired meanwhile; it cannot fire earlier, inside the body).
math_verify's own alarm does not nest like this (it cancels any pending timer when it ends), so math.py gives it no
timeout while a timer is pending.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Callable

REFIRE_S = 0.1
MAX_MESSAGE_CHARS = 300


class ScoreTimeout(BaseException):
  """A sample ran past its in-process deadline."""


class Deadline:
  """`with Deadline(s) as armed:` raises ScoreTimeout in the body after s seconds; armed is False off the main thread
  (no bound there)."""

  def __init__(self, seconds: float):
    self.seconds = float(seconds)
    self.armed = False

  def __enter__(self) -> bool:
    if threading.current_thread() is not threading.main_thread():
      return False
    self.start = time.monotonic()
    self.old_timer = signal.setitimer(signal.ITIMER_REAL, 0)  # paused first: it must not hit our handler
    self.old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
    self.armed = True
    signal.setitimer(signal.ITIMER_REAL, self.seconds, REFIRE_S)
    return True

  def _on_alarm(self, signum, frame):
    # Never inside __exit__ itself: the handler would be left installed. The timer fires again until disarmed.
    if self.armed and (frame is None or frame.f_code.co_filename != __file__):
      raise ScoreTimeout(f"past the {self.seconds:g} s deadline")

  def __exit__(self, *exc) -> None:
    if not self.armed:
      return
    self.armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL if self.old_handler is None else self.old_handler)
    delay, interval = self.old_timer
    if delay > 0:
      signal.setitimer(signal.ITIMER_REAL, max(1e-6, delay - (time.monotonic() - self.start)), interval)


def error_line(e: BaseException) -> str:
  """`Type: message` on one line, at most MAX_MESSAGE_CHARS."""
  try:
    text = f"{type(e).__name__}: {e}"
  except Exception:  # a message whose str() raises
    text = type(e).__name__
  text = " ".join(text.split())
  return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."


def score_one(fn: Callable[[str, Any], float], completion: str, target: Any) -> tuple[float, str | None]:
  """(reward, error): a scorer that raises or returns a non-finite value scores 0, and error says why."""
  try:
    r = float(fn(completion, target))
  except Exception as e:
    return 0.0, error_line(e)
  return (r, None) if math.isfinite(r) else (0.0, f"returned {r}")
