"""What a device set is, without running anything on it: a TPU slice described by libtpu on a CPU-only machine, and
each chip's memory as its compiler counts it."""

from __future__ import annotations

import os

import jax

GiB = 1024 ** 3
# Usable HBM per chip as the TPU compiler counts it (a program over this fails with RESOURCE_EXHAUSTED).
TPU_MEMORY = {"TPU v4": 32 * GiB, "TPU v5 lite": int(15.75 * GiB), "TPU v5e": int(15.75 * GiB),
              "TPU v5": 95 * GiB, "TPU v5p": 95 * GiB, "TPU v6 lite": int(31.25 * GiB), "TPU v6e": int(31.25 * GiB)}


class FitError(RuntimeError):
  pass


def topology_devices(name: str):
  """The devices of a TPU slice (e.g. "v5e:2x4"), described by libtpu without any TPU attached."""
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silences libtpu's start-up probe
  # No chip is opened, so several processes (a test run beside a fit check) may describe slices at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise FitError("--topology needs libtpu: pip install -e '.[tpu]' in the dashjax checkout (jax[tpu] at the installed jax version; Linux only)")
  from jax.experimental import topologies

  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except Exception as e:
    raise FitError(f"libtpu could not describe TPU topology {name!r} ({str(e).splitlines()[0][:200]}); names look "
                   f"like v5e:2x4, v5e:2x2, v4:2x2x1, v5p:2x2x1 or v6e:2x2")


def chip_memory(device) -> int:
  kind = getattr(device, "device_kind", "")
  if device.platform == "tpu":
    for prefix, size in sorted(TPU_MEMORY.items(), key=lambda kv: -len(kv[0])):
      if kind.startswith(prefix):
        return size
    return 16 * GiB
  try:
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:
    pass
  # CPU devices share the host's memory.
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, len(jax.local_devices()))
