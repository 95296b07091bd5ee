"""Per-token policy-gradient objectives, evaluated inside the compiled micro-step.

All losses are sums of per-token terms times host-computed weights (`weights_MxN`), so the loss of a micro-batch
is its exact share of the full-batch loss and accumulated gradients equal the full-batch gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


def token_logprobs(logits_MxNxV, targets_MxN, temperature: float):
  """log softmax(logits / T) at the target ids, float32 (T: the sampling temperature, as the sampler used)."""
  scaled = logits_MxNxV.astype(jnp.float32) / (temperature if temperature > 0 else 1.0)
  logz = jax.nn.logsumexp(scaled, axis=-1)
  picked = jnp.take_along_axis(scaled, targets_MxN[..., None], axis=-1)[..., 0]
  return picked - logz


def kl_penalty(logprobs, ref_logprobs, estimator: str):
  """Per-token estimate of KL(pi || pi_ref) from samples of pi: k1 = log pi - log ref; k3 = e^d - d - 1, d = ref - pi."""
  if estimator == "k1":
    return logprobs - ref_logprobs
  if estimator == "k3":
    d = ref_logprobs - logprobs
    return jnp.exp(d) - d - 1.0
  raise ValueError(f"rl.kl_estimator={estimator!r} is not one of {KL_ESTIMATORS}")


def policy_loss(logprobs_MxN, old_logprobs_MxN, adv_M, *, clip_eps: float, on_policy: bool):
  """Per-token clipped surrogate -min(rho A, clip(rho) A).

  On-policy the ratio is exp(lp - stopgrad(lp)) == 1 exactly, so no old log-prob forward is needed and the gradient
  is REINFORCE's -A grad log pi. Off-policy, old log-probs are the sampler's own.
  """
  adv = adv_M[:, None]
  if on_policy:
    ratio = jnp.exp(logprobs_MxN - jax.lax.stop_gradient(logprobs_MxN))
    return -ratio * adv, jnp.zeros_like(logprobs_MxN)
  ratio = jnp.exp(logprobs_MxN - old_logprobs_MxN)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  was_clipped = (clipped < unclipped).astype(jnp.float32)
  return -jnp.minimum(unclipped, clipped), was_clipped
