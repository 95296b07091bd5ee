"""Training: the compiled learner, the update phase, rollouts, the loop, evaluation, SFT, checkpoints, metrics."""
