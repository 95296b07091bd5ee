"""Meshes, logical-axis sharding rules and multi-host helpers."""

from dashjax.parallel.mesh import (LEARNER_RULES, SAMPLER_RULES, batch_sharding, make_mesh, param_shardings,
                                   replicated)

__all__ = ["make_mesh", "param_shardings", "batch_sharding", "replicated", "LEARNER_RULES", "SAMPLER_RULES"]
