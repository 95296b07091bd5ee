"""Orbax checkpoints of the training state: params, optimizer state, step, data position and RNG seed."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
    # Remote paths (gs://...) go to Orbax as they are; abspath would turn them into local folders.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    # read_only (evaluation): never create the folder, save, or delete old steps.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
    if read_only and not os.path.isdir(self.directory) and "://" not in self.directory:
      self.manager = None
      return
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return None if self.manager is None else self.manager.latest_step()

  def save(self, step: int, params, opt_state, meta: dict):
    """Blocks until the checkpoint is on disk: a preempted run must not exit with a half-written one."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}), meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, params_like, opt_state_like, step: int | None = None):
    """Restores into the structure and shardings of the given (freshly initialized) state."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params_like, "opt_state": opt_state_like})
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
    return out["state"]["params"], out["state"]["opt_state"], out["meta"]

  def close(self):
    if self.manager is not None:
      self.manager.close()
