"""Model definitions and weight import/export."""

from dashjax.models.config import ModelConfig
from dashjax.models.transformer import DecodeCache, PromptCache, Transformer, positions_from_valid

__all__ = ["ModelConfig", "Transformer", "PromptCache", "DecodeCache", "positions_from_valid"]
