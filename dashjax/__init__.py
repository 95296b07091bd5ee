"""dashjax: JAX-native RL for reasoning language models (DASH: preemptive sampling + gradient filtering)."""

from dashjax.models.hf_io import save_hf
from dashjax.models.loading import load_model
from dashjax.sampling.generate import generate

__version__ = "0.1.0"
__all__ = ["load_model", "generate", "save_hf", "__version__"]
