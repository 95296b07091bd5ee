"""Orbax checkpoints of the training state: params, optimizer state, step, data position and RNG seed.

The directory may be local or on an object store (gs://): Orbax writes arrays through tensorstore and its markers
through epath, and a step counts only once Orbax has committed it, so a save cut short (preemption, a network error)
leaves nothing that a resume would pick up.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import jax
import orbax.checkpoint as ocp

from dashjax.store import paths
from dashjax.store.workdir import finished_steps

log = logging.getLogger("dashjax")

SAVE_TRIES = 3


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message names it and what to do."""


class _OrbaxNoise(logging.Filter):
  # Each save already waits for itself to finish, so Orbax's "waiting for previous save" note is only noise; a
  # failed background save is logged by Orbax with its traceback and then raised to `save`, which says it in one
  # line and retries or stops the run.
  def filter(self, record):
    msg = record.getMessage()
    return not any(noise in msg for noise in ("Waiting for previous save", "_SignalingThread.run() raised an exception",
                                              "Commit operations or the Commit callback in background save thread"))


logging.getLogger("absl").addFilter(_OrbaxNoise())


def _quiet_closed_loop(unraisable, _previous=sys.unraisablehook):
  # A restore that fails mid-read (a damaged checkpoint) leaves tensorstore callbacks that find Orbax's event loop
  # closed; they can do nothing, and their traceback would bury the one-line error that names the checkpoint.
  if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
    return
  _previous(unraisable)


sys.unraisablehook = _quiet_closed_loop

def _from_orbax(exc_info) -> bool:
  tb = exc_info[2] if exc_info else None
  while tb is not None:
    if "orbax" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


class _OrbaxUnreadFutures(logging.Filter):
  # A save that fails on one array (a bucket's transient error) leaves Orbax's futures for the other arrays
  # unread; asyncio prints each one's traceback when it is collected. The failure itself reaches `save`, which
  # retries it or stops the run with one line, so these are dropped.
  def filter(self, record):
    return not (record.getMessage().startswith("Future exception was never retrieved") and _from_orbax(record.exc_info))


logging.getLogger("asyncio").addFilter(_OrbaxUnreadFutures())


class _NoOrbaxTracebacks(logging.Filter):
  # Whatever else Orbax logs about a failed save keeps its line but not its traceback: the failure reaches `save`.
  def filter(self, record):
    if record.exc_info and ("orbax" in (record.pathname or "") or _from_orbax(record.exc_info)):
      record.exc_info, record.exc_text = None, None
    return True


for _name in ("absl", "asyncio", "orbax", ""):
  logging.getLogger(_name).addFilter(_NoOrbaxTracebacks())
for _handler in logging.getLogger().handlers:
  _handler.addFilter(_NoOrbaxTracebacks())


class Checkpointer:
  def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
    # Remote paths (gs://...) go to Orbax as they are; abspath would turn them into local folders.
    self.directory = directory if paths.is_remote(directory) else os.path.abspath(directory)
    self.keep, self.read_only = keep, read_only
    # read_only (evaluation): never create the folder, save, or delete old steps.
    if read_only and not paths.exists(self.directory):
      self.manager = None
      return
    self.manager = self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=not self.read_only, read_only=self.read_only)
    return ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return None if self.manager is None else self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return [] if self.manager is None else sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, meta: dict):
    """Blocks until the checkpoint is committed: a preempted run must not exit with a half-written one. A failed
    write (a bucket's transient error) is retried; if it keeps failing, the run stops with the previous
    checkpoint intact and named."""
    if step in self.all_steps():  # already saved (the end of a run that was just checkpointed)
      return
    for attempt in range(1, SAVE_TRIES + 1):
      try:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}), meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()
        return
      except Exception as e:  # noqa: BLE001 -- storage clients raise many types
        first_line = str(e).splitlines()[0][:200] if str(e) else ""
        last = [s for s in finished_steps(self.directory) if s != step]
        if attempt == SAVE_TRIES:
          raise CheckpointError(
              f"checkpoint of step {step} could not be written to {self.directory} after {SAVE_TRIES} tries "
              f"({type(e).__name__}: {first_line}); the last good checkpoint is "
              f"{f'step {last[-1]}' if last else 'none'}; continue with --auto_resume") from e
        log.warning("checkpoint of step %d failed (%s: %s); retrying", step, type(e).__name__, first_line)
        time.sleep(2.0 * attempt)
        self.manager = self._open()  # forget the failed attempt's bookkeeping

  def restore(self, params_like, opt_state_like, step: int | None = None):
    """Restores into the structure and shardings of the given (freshly initialized) state."""
    steps = self.all_steps()
    step = self.latest_step() if step is None else step
    if step not in steps:
      raise CheckpointError(f"--resume_step={step}: {self.directory} holds no finished checkpoint of that step "
                            f"(it holds {steps or 'none'})")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params_like, "opt_state": opt_state_like})
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                               meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 -- a damaged checkpoint fails in tensorstore, JSON or Orbax itself
      earlier = [s for s in steps if s < step]
      offer = (f"resume from step {earlier[-1]} with --resume --resume_step={earlier[-1]} (later checkpoints are "
               f"set aside, not deleted)" if earlier else "start over with --overwrite")
      first = str(e).splitlines()[0][:200] if str(e) else ""
      raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be read ({type(e).__name__}: "
                            f"{first}); {offer}") from e
    return out["state"]["params"], out["state"]["opt_state"], out["meta"]

  def set_aside_after(self, step: int):
    """Moves the checkpoints after `step` to WORKDIR/checkpoints-set-aside/STEP-DATE, so a resume from `step` can
    write those steps again; nothing is deleted. Process 0 moves; every process then reopens the manager."""
    later = [s for s in self.all_steps() if s > step]
    if later and jax.process_index() == 0:
      aside = f"{self.directory.rstrip('/')}-set-aside"  # WORKDIR/checkpoints-set-aside
      paths.makedirs(aside)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for s in later:
        target = paths.join(aside, f"{s}-{stamp}")
        paths.rename(paths.join(self.directory, str(s)), target)
        log.warning("set checkpoint step %d aside: %s", s, target)
    if later:
      from dashjax.parallel.distributed import sync

      sync("dashjax: checkpoints set aside")
      self.manager.close()
      self.manager = self._open()

  def close(self):
    if self.manager is not None:
      self.manager.close()
