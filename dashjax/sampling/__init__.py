"""Jitted KV-cache sampling and exact token drawing."""

from dashjax.sampling.continuous import ContinuousSampler, make_sampler
from dashjax.sampling.draw import draw_tokens
from dashjax.sampling.sampler import Rollouts, Sampler, SamplerStats, SamplingConfig, sample

__all__ = ["ContinuousSampler", "draw_tokens", "make_sampler", "Rollouts", "Sampler", "SamplerStats", "SamplingConfig",
           "sample"]
