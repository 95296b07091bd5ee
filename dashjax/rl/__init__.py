"""The RL core: advantage estimators, losses, and host-side batching (weights, filtering, packing)."""
