"""The shipped configs with dotted overrides, as tests and the golden recorder build them:
`tiny_config(**{"rl.algo": "grpo"})` is configs/tiny.py with `--config.rl.algo=grpo`."""

from __future__ import annotations

import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_overrides(c, overrides: dict):
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _config_module(name: str):
  if REPO not in sys.path:  # configs/ is a folder of files, not an installed package
    sys.path.insert(0, REPO)
  return importlib.import_module(f"configs.{name}")


def tiny_config(**overrides):
  return with_overrides(_config_module("tiny").get_config(), overrides)


def qwen_config(size: str = "0.5b", **overrides):
  """configs/qwen25_math.py with its hand-set batch sizes (the benchmarks'), then `overrides`."""
  qwen = _config_module("qwen25_math")
  return with_overrides(qwen.get_config(size), {**qwen.HAND_SET, **overrides})
