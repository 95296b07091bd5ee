"""Helpers shared by the benchmark scripts: machine description, config loading, tables, copies of state."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def log(*args):
  print(*args, flush=True)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment() -> dict:
  dev = jax.devices()[0]
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "jax": jax.__version__, "jaxlib": __import__("jaxlib").__version__, "flax": __import__("flax").__version__,
      "optax": __import__("optax").__version__, "backend": jax.default_backend(),
      "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}", "num_devices": jax.device_count(),
      "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
      "cpu_model": cpu_model(), "python": platform.python_version(), "platform": platform.platform(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average_start": os.getloadavg(),
  }


def load_config(path: str):
  """`get_config()` of a configs/*.py file (an optional ':ARG' is passed to it, as the CLI does)."""
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def fresh_copy(tree):
  """A copy with new buffers and the same shardings: donating it never frees the original's memory."""
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), tree)


def enable_compile_cache(directory: str):
  """Identical programs (e.g. the same learner step built by several Trainers) then compile once per process."""
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def write_json(path: str, obj):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=str)
