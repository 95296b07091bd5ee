"""dashjax: JAX-native RL for reasoning language models (DASH: preemptive sampling + gradient filtering).

The public API is imported lazily, so that importing a submodule (reward workers import dashjax.rewards) does not
load JAX. The environment JAX, libtpu and the storage clients read is settled here, before any of them starts.
"""

from dashjax import platform as _platform

_platform.configure()

__version__ = "0.1.0"
__all__ = ["load_model", "generate", "save_hf", "__version__"]

_API = {"load_model": "dashjax.models.loading", "generate": "dashjax.sampling.generate",
        "save_hf": "dashjax.models.hf_io"}


def __getattr__(name):
  if name in _API:
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
  raise AttributeError(f"module 'dashjax' has no attribute {name!r}")
