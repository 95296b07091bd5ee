"""Jitted KV-cache sampling and exact token drawing."""

from dashjax.sampling.draw import draw_tokens
from dashjax.sampling.sampler import Rollouts, Sampler, SamplingConfig, sample

__all__ = ["draw_tokens", "Rollouts", "Sampler", "SamplingConfig", "sample"]
