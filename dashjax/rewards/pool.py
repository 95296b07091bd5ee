"""A process pool that scores completions with a hard per-sample timeout.

    with RewardPool(num_workers=2, timeout_s=5.0) as pool:
      batch = pool.score("math", completions, gold_answers)  # RewardBatch: rewards, timed_out, errors, first_error

Why processes and why this design:
- sympy can hang (huge powers, pathological simplify) in C code where no signal handler runs, and math_verify's
  own `signal.alarm` timeout only works in a main thread. The only timeout that always holds is killing the
  process. A sample that runs past `timeout_s` scores 0, is flagged in `timed_out`, its worker is SIGKILLed and
  replaced, and the worker's unscored samples go back in the queue for the others.
- Workers are started with the "forkserver" method (fallback "spawn"), never "fork": the trainer runs JAX, whose
  runtime threads make forking it unsafe. The fork server is a fresh interpreter that imports the scoring modules
  once (`set_forkserver_preload`), so a replacement worker forks from it in milliseconds instead of paying the
  ~4 s of imports (JAX included, via `dashjax/__init__`) again.
- Work goes out in chunks (about 4 per worker per batch, for load balance) and each result comes back as its own
  small message; each result restarts the clock of the worker's next sample, which is what makes the timeout
  per-sample while the messaging stays per-chunk. The clock of a chunk's first sample starts when the worker
  acknowledges the chunk, after it has imported the scorer, so a first-use import is not charged to a sample.
- Scoring functions are named, not pickled: the registry maps a name to "module:function", and workers import it.
  `register_scorer` adds module-level functions (tests use this for a deliberately hanging scorer).
- No orphans: workers are daemonic, closed by `close()` / the context manager / a finalizer at interpreter exit,
  and on Linux ask the kernel (PR_SET_PDEATHSIG) to kill them when their parent dies, so even a worker stuck in
  C code dies with a SIGKILLed trainer (see `_die_with_parent` for the fork-server detail).
- The trainer's script must be import-safe (`if __name__ == "__main__":`), as for any spawn/forkserver pool:
  workers import the main module.

`num_workers=0` scores in the calling process. In the main thread each sample runs under a SIGALRM deadline of
`timeout_s` (`bounds.Deadline`: Python code is cut, one long C call only when it returns); off the main thread
there is no timeout at all. With workers, calls to `score` are serialized by a lock; it may be called from a thread
other than the trainer's main thread.
A scorer that raises (or returns NaN/inf) scores 0 and is counted in `errors`; the first such message (by sample
index) comes back as `first_error`, so a misconfigured scorer is visible instead of silently scoring 0.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import weakref
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

import numpy as np

from dashjax.rewards.bounds import Deadline, ScoreTimeout, score_one

_REGISTRY: dict[str, str] = {
    "math": "dashjax.rewards.math:math_reward",
    "gym": "dashjax.rewards.gym:gym_reward",
    "contains": "dashjax.rewards.toy:contains_answer",
}
# Imported once by the fork server (and by each spawned worker) so that workers start warm.
_PRELOAD = ["dashjax.rewards.pool", "dashjax.rewards.math", "dashjax.rewards.gym", "math_verify", "sympy",
            "reasoning_gym"]


def scorer_names() -> tuple[str, ...]:
  """The scorers reward.fn may name (besides a 'module:function' path): the built-in ones and any registered."""
  return tuple(_REGISTRY)


def register_scorer(name: str, fn: Callable[[str, Any], float] | str) -> None:
  """Registers `fn(completion, target) -> float` under `name`. fn must be importable: a module-level function or
  a "module:qualname" string (workers import it by that path)."""
  if callable(fn):
    if "<locals>" in fn.__qualname__:
      raise ValueError(f"{fn.__qualname__} is not importable by name from a worker; define it at module level")
    fn = f"{fn.__module__}:{fn.__qualname__}"
  if ":" not in fn:
    raise ValueError(f"scorer path {fn!r} must look like 'package.module:function'")
  _REGISTRY[name] = fn


def scorer_path(name: str) -> str:
  if name in _REGISTRY:
    return _REGISTRY[name]
  if ":" in name:  # an explicit "module:function" path
    return name
  raise KeyError(f"unknown scoring function {name!r}; registered: {sorted(_REGISTRY)}")


def load_scorer(path: str) -> Callable[[str, Any], float]:
  module, _, qualname = path.partition(":")
  obj: Any = importlib.import_module(module)
  for part in qualname.split("."):
    obj = getattr(obj, part)
  return obj


@dataclasses.dataclass(frozen=True)
class RewardBatch:
  rewards: np.ndarray  # float32 [N]
  timed_out: np.ndarray  # bool [N]: ran past the timeout or its worker died; scored 0
  seconds: float  # wall time of the score() call
  errors: np.ndarray  # bool [N]: the scoring function raised (or returned NaN/inf); scored 0
  first_error: str | None = None  # "Type: message" (one line) of the lowest-index error

  @property
  def num_timed_out(self) -> int:
    return int(self.timed_out.sum())

  @property
  def num_errors(self) -> int:
    return int(self.errors.sum())


def _batch(rewards: np.ndarray, timed_out: np.ndarray, t0: float, messages: list[str | None]) -> RewardBatch:
  errors = np.array([m is not None for m in messages], bool)
  first = next((m for m in messages if m is not None), None)
  return RewardBatch(rewards, timed_out, time.perf_counter() - t0, errors, first)


# ---------------------------------------------------------------------------------------------------------------
# Worker side


def _die_with_parent():
  """Linux, best effort: get SIGKILLed when the parent process exits, even while stuck in C code.

  Under "forkserver" the parent is the fork server, which exits once every holder of its "alive" pipe has closed
  it. The trainer holds it, but so does each worker (multiprocessing hands it to every child), so a hung worker
  would keep the server alive and the server would keep the worker alive. Closing the worker's copy breaks that
  cycle: trainer dies -> server sees EOF and exits -> the kernel kills the worker.
  Under "spawn" the parent is the trainer; the signal then fires when the trainer *thread* that started the
  worker exits, and the pool replaces the worker on its next use.
  """
  if not sys.platform.startswith("linux"):
    return
  parent = os.getppid()
  try:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
  except Exception:
    return
  if os.getppid() != parent:  # the parent died before the prctl took effect
    os._exit(1)
  try:
    from multiprocessing import forkserver

    server = forkserver._forkserver  # private, CPython 3.8-3.13: the worker's copy of the alive fd
    if server._forkserver_alive_fd is not None:
      os.close(server._forkserver_alive_fd)
      server._forkserver_alive_fd = None
  except Exception:
    pass


def _worker_main(conn, preload: Sequence[str]):
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
  _die_with_parent()
  for name in preload:  # no-ops under the fork server, which imported them already
    importlib.import_module(name)
  from dashjax.rewards.math import math_reward

  math_reward("\\boxed{x+1}", "1+x")  # first math_verify call compiles its regexes and sympy's LaTeX parser
  conn.send(("ready", os.getpid()))
  fns: dict[str, Callable] = {}
  while True:
    try:
      msg = conn.recv()
    except (EOFError, OSError):  # parent went away
      return
    if msg is None:
      return
    path, items = msg
    try:
      fn = fns[path] if path in fns else fns.setdefault(path, load_scorer(path))
    except Exception as e:  # a configuration error, not a wrong answer: the parent raises it
      conn.send(("go", f"{type(e).__name__}: {e}"))
      continue
    conn.send(("go", None))  # scorer imported: the parent starts the first sample's clock only now
    for i, completion, target in items:
      conn.send((i, *score_one(fn, completion, target)))


# ---------------------------------------------------------------------------------------------------------------
# Parent side


class _Worker:
  def __init__(self, ctx, preload):
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    self.proc = ctx.Process(target=_worker_main, args=(child_conn, preload), daemon=True,
                            name="dashjax-reward-worker")
    self.proc.start()
    child_conn.close()  # only the child holds its end, so its death reads as EOF here
    self.conn = parent_conn
    self.started = time.monotonic()
    self.ready = False
    self.dead = False
    self.items: collections.deque[int] = collections.deque()  # sent, not yet scored, in the worker's order
    self.deadline = math.inf  # when the sample at items[0] times out

  def stop(self, grace_s: float = 0.0):
    if grace_s > 0 and self.proc.is_alive():
      try:
        self.conn.send(None)
        self.proc.join(grace_s)
      except (OSError, ValueError):
        pass
    if self.proc.is_alive():
      self.proc.kill()
    self.proc.join(5.0)
    self.conn.close()


def _shutdown(workers: list[_Worker]):
  for w in workers:  # ask all first, then wait: they exit in parallel
    try:
      w.conn.send(None)
    except (OSError, ValueError):
      pass
  for w in workers:
    w.stop(grace_s=1.0)
  workers.clear()


class RewardPool:
  """Scores (completion, target) pairs with a registered function in worker processes. See the module docstring."""

  def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_method: str | None = None,
               startup_timeout_s: float = 120.0):
    if num_workers < 0:
      raise ValueError(f"num_workers={num_workers} must be >= 0")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s={timeout_s} must be > 0")
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self.restarts = 0  # workers replaced after a timeout or crash, over the pool's life
    self._lock = threading.Lock()
    self._closed = False
    self._workers: list[_Worker] = []
    # The finalizer holds the list, not the pool, so the pool can be collected; it also runs at interpreter exit.
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)
    if num_workers == 0:
      return
    if start_method is None:
      start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork":
      raise ValueError("start_method='fork' is unsafe in a process that runs JAX; use 'forkserver' or 'spawn'")
    self._ctx = mp.get_context(start_method)
    if start_method == "forkserver":
      # Global to the fork server and only read when it starts; if it already runs, workers import on their own.
      self._ctx.set_forkserver_preload(_PRELOAD)
    self._workers.extend(_Worker(self._ctx, _PRELOAD) for _ in range(num_workers))

  def __enter__(self) -> RewardPool:
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    """Stops the workers (idempotent)."""
    with self._lock:
      self._closed = True
      self._finalizer()

  def wait_ready(self, timeout_s: float | None = None):
    """Blocks until every worker has started (imports done). Optional: score() waits as needed."""
    with self._lock:
      deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
      while not all(w.ready for w in self._workers):
        self._pump(np.zeros(0, np.float32), [], max(0.0, deadline - time.monotonic()))
        if any(w.dead and not w.ready for w in self._workers):
          self._reap(collections.deque(), np.zeros(0, bool))  # raises with the exit code
        if time.monotonic() >= deadline:
          raise TimeoutError("reward workers did not start in time")

  def score(self, fn_name: str, completions: Sequence[str], targets: Sequence[Any]) -> RewardBatch:
    """Rewards for completions[i] against targets[i] with the scoring function registered as fn_name."""
    if len(completions) != len(targets):
      raise ValueError(f"{len(completions)} completions but {len(targets)} targets")
    path = scorer_path(fn_name)
    n = len(completions)
    t0 = time.perf_counter()
    rewards = np.zeros(n, np.float32)
    timed_out = np.zeros(n, bool)
    messages: list[str | None] = [None] * n
    if self.num_workers == 0:
      fn = load_scorer(path)
      for i in range(n):
        try:
          with Deadline(self.timeout_s):  # main thread only (see the module docstring)
            rewards[i], messages[i] = score_one(fn, completions[i], targets[i])
        except ScoreTimeout:
          rewards[i], messages[i], timed_out[i] = 0.0, None, True
      return _batch(rewards, timed_out, t0, messages)

    with self._lock:
      if self._closed:
        raise RuntimeError("RewardPool is closed")
      pending = collections.deque(range(n))
      chunk = max(1, min(64, math.ceil(n / (4 * self.num_workers))))
      left = n
      try:
        while left:
          now = time.monotonic()
          for w in self._workers:
            if w.ready and not w.items and pending:
              ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
              try:
                w.conn.send((path, [(i, completions[i], targets[i]) for i in ids]))
              except (OSError, ValueError):  # died while idle: requeue, _reap replaces it
                pending.extendleft(reversed(ids))
                w.dead = True
                continue
              w.items.extend(ids)
              w.deadline = now + self.startup_timeout_s  # until "go": a first call may import the scorer
          busy = [w.deadline for w in self._workers if w.items]
          wait_s = (min(busy) - now) if busy else self.startup_timeout_s
          left -= self._pump(rewards, messages, max(0.0, wait_s))
          left -= self._reap(pending, timed_out)
      except BaseException:
        # Interrupted mid-batch: workers still chewing on this batch would answer into the next one.
        for k, w in enumerate(self._workers):
          if w.items:
            w.stop()
            self._workers[k] = _Worker(self._ctx, _PRELOAD)
        raise
    return _batch(rewards, timed_out, t0, messages)

  def _pump(self, rewards: np.ndarray, messages: list, wait_s: float) -> int:
    """Waits up to wait_s for any worker message or death, drains every pending message; returns #results."""
    objs = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
    wait(objs, wait_s)
    received = 0
    for w in self._workers:
      try:
        while w.conn.poll():
          msg = w.conn.recv()
          if msg[0] == "ready":
            w.ready = True
            continue
          if msg[0] == "go":
            if msg[1] is not None:
              w.items.clear()  # the worker skipped the chunk and is idle again
              raise RuntimeError(f"reward worker cannot load the scoring function: {msg[1]}")
            w.deadline = time.monotonic() + self.timeout_s
            continue
          i, reward, error = msg
          w.items.popleft()  # workers score their chunk in order, so this is i
          rewards[i], messages[i] = reward, error
          received += 1
          w.deadline = time.monotonic() + self.timeout_s  # the next sample's clock starts now
      except (EOFError, OSError):
        w.dead = True
      if not w.proc.is_alive():
        w.dead = True
    return received

  def _reap(self, pending: collections.deque, timed_out: np.ndarray) -> int:
    """Replaces dead and overdue workers; their current sample is given up (returns how many), the rest requeued."""
    now = time.monotonic()
    given_up = 0
    for k, w in enumerate(self._workers):
      if not w.ready and (w.dead or now - w.started > self.startup_timeout_s):
        w.proc.join(1.0)  # for the exit code
        raise RuntimeError(f"reward worker failed to start (exit code {w.proc.exitcode}); is every module in "
                           f"{_PRELOAD} importable, and the main script guarded by if __name__ == '__main__'?")
      if w.dead or (w.items and now >= w.deadline):
        if w.items:
          timed_out[w.items.popleft()] = True
          given_up += 1
          pending.extendleft(reversed(w.items))
          w.items.clear()
        w.stop()
        self._workers[k] = _Worker(self._ctx, _PRELOAD)
        self.restarts += 1
    return given_up
