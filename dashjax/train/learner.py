"""The compiled learner: `micro_step(params, grads_acc, micro_batch) -> (grads_acc, stats)` and
`apply(params, opt_state, grads) -> (params, opt_state, grad_norm)`.

Both are jitted once per run. Filtering changes only how many times the host calls `micro_step`, never its shapes,
so there is no recompilation when the number of kept rows changes. The accumulator, parameters and optimizer state
are donated: they are replaced by each call, and donation lets XLA reuse their buffers in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dashjax.models.compute import PLAIN, ComputeOptions
from dashjax.rl.losses import kl_penalty, policy_loss
from dashjax.train.logprobs import completion_logprobs

STAT_KEYS = ("loss", "pg_loss", "kl", "clip_frac", "weight", "entropy_proxy")
LR_SCHEDULES = ("constant", "linear")  # train.lr_schedule


@dataclasses.dataclass(frozen=True)
class LossConfig:
  temperature: float = 1.0  # the sampler's: log-probs are of softmax(logits / T)
  on_policy: bool = True  # ratio == 1: no old log-probs needed
  clip_eps: float = 0.2
  kl_beta: float = 0.0
  kl_estimator: str = "k3"


def micro_loss(params, graphdef, ref_params, mb: dict, prompt_len: int, cfg: LossConfig, prompt_group: int = 1,
               opts: ComputeOptions = PLAIN, chunk: int = 0):
  """This micro-batch's exact share of the update's loss, and summed statistics."""
  model = nnx.merge(graphdef, params)
  lp = completion_logprobs(model, mb["tokens"], mb["valid"], prompt_len, cfg.temperature, prompt_group, opts, chunk)
  # Advantages are selected through the row mask inside the compiled loss, so filler rows weigh nothing even if a
  # caller forgot to zero their weights.
  adv = jnp.where(mb["row_mask"], mb["adv"], 0.0)
  w = mb["weights"] * mb["row_mask"][:, None]
  per_token, clipped = policy_loss(lp, mb["old_logprobs"], adv, clip_eps=cfg.clip_eps, on_policy=cfg.on_policy)
  pg = jnp.sum(per_token * w)
  kl = jnp.zeros(())
  if cfg.kl_beta > 0:
    ref_lp = jax.lax.stop_gradient(completion_logprobs(nnx.merge(graphdef, ref_params), mb["tokens"], mb["valid"],
                                                       prompt_len, cfg.temperature, prompt_group, opts, chunk))
    kl = jnp.sum(kl_penalty(lp, ref_lp, cfg.kl_estimator) * w)
  loss = pg + cfg.kl_beta * kl
  stats = {"loss": loss, "pg_loss": pg, "kl": kl, "clip_frac": jnp.sum(clipped * w), "weight": jnp.sum(w),
           "entropy_proxy": -jnp.sum(jax.lax.stop_gradient(lp) * w)}
  return loss, stats


class Learner:
  """Holds the compiled micro-step and optimizer step for one model structure and loss configuration."""

  def __init__(self, graphdef, optimizer: optax.GradientTransformation, loss_cfg: LossConfig, prompt_len: int,
               param_shardings=None, prompt_group: int = 1, compute: ComputeOptions = PLAIN, logprob_chunk: int = 0):
    """`prompt_group` = g > 1 promises that micro-batches hold whole groups of g consecutive rows sharing a prompt
    (the Updater packs them so); each prompt is then run once per group. `compute` (remat, attention, FSDP
    gathers) and `logprob_chunk` choose how the loss is computed, never what it is."""
    self.graphdef, self.optimizer, self.loss_cfg, self.prompt_len = graphdef, optimizer, loss_cfg, prompt_len
    self.prompt_group = prompt_group
    grad_fn = jax.grad(micro_loss, has_aux=True)

    def micro_step(params, grads_acc, ref_params, mb):
      grads, stats = grad_fn(params, graphdef, ref_params, mb, prompt_len, loss_cfg, prompt_group, compute,
                             logprob_chunk)
      return jax.tree.map(jnp.add, grads_acc, grads), stats

    def apply(params, opt_state, grads):
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, grad_norm

    out = None if param_shardings is None else (param_shardings, None)
    self.micro_step = jax.jit(micro_step, donate_argnums=(1,), out_shardings=out)
    self._apply_fn = apply
    self._apply_programs: dict = {}
    self._zeros = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p),
                          out_shardings=param_shardings)

  def zero_grads(self, params):
    return self._zeros(params)

  def apply_program(self, params, opt_state):
    """The jitted `apply` for parameters and optimizer state laid out as these (arrays or abstract arrays with
    shardings): its outputs keep exactly the inputs' shardings. An equivalent but differently typed sharding on the
    new params would be a new jit cache key for micro_step, i.e. one needless recompilation after the first
    update."""
    shardings = lambda tree: jax.tree.map(lambda x: getattr(x, "sharding", None), tree)  # noqa: E731
    out = (shardings(params), shardings(opt_state), None)
    key = jax.tree.structure(out), tuple(jax.tree.leaves(out))
    if key not in self._apply_programs:
      self._apply_programs[key] = jax.jit(self._apply_fn, donate_argnums=(0, 1), out_shardings=out)
    return self._apply_programs[key]

  def apply(self, params, opt_state, grads):
    return self.apply_program(params, opt_state)(params, opt_state, grads)

  def compile_counts(self) -> dict:
    """Compilations so far of each program (filtering must never add any)."""
    return {"micro_step": self.micro_step._cache_size(),
            "apply": sum(p._cache_size() for p in self._apply_programs.values())}


def make_optimizer(learning_rate: float, num_steps: int, *, warmup_steps: int = 0, schedule: str = "constant",
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW with optional global-norm clipping; `schedule` is "constant" or "linear" (decay to 0), after warm-up."""
  if schedule == "constant":
    decay = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    decay = optax.linear_schedule(learning_rate, 0.0, max(num_steps - warmup_steps, 1))
  else:
    raise ValueError(f"train.lr_schedule={schedule!r} is not one of {LR_SCHEDULES}")
  lr = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps]) \
      if warmup_steps > 0 else decay
  parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)
