"""Multi-host helpers. On one process they reduce to plain device_put / np.asarray."""

from __future__ import annotations

import os

import jax
import numpy as np


def initialize_from_env() -> None:
  """Calls jax.distributed.initialize when launched as one of several processes (TPU pods set this up themselves).

  Set DASHJAX_COORDINATOR=host:port, DASHJAX_NUM_PROCESSES and DASHJAX_PROCESS_ID for GPU/CPU clusters; on Cloud
  TPU VMs `jax.distributed.initialize()` discovers everything (set DASHJAX_DISTRIBUTED=1).
  """
  if os.environ.get("DASHJAX_COORDINATOR"):
    jax.distributed.initialize(coordinator_address=os.environ["DASHJAX_COORDINATOR"],
                               num_processes=int(os.environ["DASHJAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["DASHJAX_PROCESS_ID"]))
  elif os.environ.get("DASHJAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def put(x: np.ndarray, sharding) -> jax.Array:
  """A global array from a host array that every process holds in full (all hosts build the same batch)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(x) -> np.ndarray:
  """The full value of a (possibly multi-host sharded) array on every process."""
  if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def same_on_all_hosts(x: np.ndarray) -> np.ndarray:
  """Process 0's value everywhere: decisions that depend on wall-clock (reward timeouts) must not diverge."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def is_main_process() -> bool:
  """Only process 0 writes files into the workdir (metrics, evaluations, plots)."""
  return jax.process_index() == 0


def any_host(flag: bool) -> bool:
  """True on every process if it is True on any: a SIGTERM seen by one host stops all hosts at the same step."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], bool))).any())


def sync(name: str) -> None:
  """Every process waits here until all have arrived (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
