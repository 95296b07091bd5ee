"""The training loop: sample, score, filter, update; evaluate, log and checkpoint.

Algorithms (`rl.algo`), all from one loop:
  dash       one sampling pass of P*G rows per update, in calls of `sampling.batch_size` rows; rows with
             |advantage| <= rl.filter_threshold are dropped before backprop and the rest packed into fewer
             micro-batches.
  pg         the same without filtering (preemptive sampling alone).
  grpo       the paper's standard implementation: the sampler is called once per micro-batch, with micro-batch-sized
             batches, and gradients accumulate to one update.
  ppo_multi  one sampling pass, then rl.epochs_per_batch updates over all rows with clipped ratios against the
             sampler's log-probs.
  ppo_mini   one sampling pass split into rl.updates_per_batch mini-batches of whole groups, one update each.
`train.num_steps` counts sampled batches; each is one optimizer update except for the PPO variants.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dashjax.config import validate
from dashjax.data import PromptFormatter, PromptIterator, load_examples
from dashjax.models.loading import load_model
from dashjax.parallel import plan as size_plan
from dashjax.parallel.distributed import any_host, is_main_process
from dashjax.parallel.mesh import LEARNER_RULES, SAMPLER_RULES, make_mesh, opt_state_shardings, param_shardings
from dashjax.rewards import RewardPool
from dashjax.rl.advantages import group_advantages
from dashjax.rl.batching import keep_mask
from dashjax.sampling.generate import eos_ids_for
from dashjax.store import paths
from dashjax.store.logs import JsonlLog
from dashjax.train.checkpoint import Checkpointer, CheckpointError
from dashjax.train.evaluate import Evaluator
from dashjax.train import programs
from dashjax.train.metrics import MetricsWriter, plot_curve
from dashjax.train.rollouts import RolloutCollector
from dashjax.train.sft import sft_batch
from dashjax.train.update import Updater, UpdateResult

log = logging.getLogger("dashjax")


class RunStopped(RuntimeError):
  """The run stopped itself on a problem it can name in one line; nothing of the failing step was saved."""


class NonFiniteError(RunStopped):
  """A training step produced a NaN or infinite loss or gradient norm."""


class RewardError(RunStopped):
  """The first steps (or the evaluation before training) scored nothing because the scorer raised."""


# A run whose first few steps score nothing *and* see scorer errors has a scorer that does not fit its data.
REWARD_ERROR_STEPS = 3


def _non_finite(m: dict) -> list[str]:
  """The loss/gradient-norm entries of a step's metrics that are NaN or infinite (None: no update this step)."""
  return [f"{k}={m[k]}" for k in ("pg_loss", "nll", "grad_norm")
          if isinstance(m.get(k), (int, float)) and not math.isfinite(m[k])]


class Trainer:
  def __init__(self, config, workdir: str, *, resume: bool = False, model_and_tokenizer=None,
               read_only: bool = False, resume_step: int | None = None):
    """`workdir` is a local folder or an object-store URL (gs://bucket/run). `read_only` (evaluation of a run): the
    latest checkpoint is loaded if there is one, and nothing in `workdir` is created, truncated or appended to (no
    metrics, no eval.jsonl, no checkpoints). `resume_step`: resume from that checkpoint instead of the latest; the
    later ones are set aside (never deleted)."""
    if size_plan.is_auto(config):  # a notebook's Trainer(config): dashjax-train has planned before it gets here
      config, report = size_plan.resolve(config)
      print(size_plan.format_table(report), file=sys.stderr, flush=True)
    self.config, self.workdir, self.read_only = config, workdir, read_only
    self.plan = validate(config, check_model_source=model_and_tokenizer is None)
    if not read_only:
      paths.makedirs(workdir)
    c, plan = config, self.plan
    self.mesh = make_mesh(plan.mesh_shape)
    model, self.tokenizer = model_and_tokenizer or load_model(c.model.source, dtype=c.model.dtype,
                                                              param_dtype=c.model.get("param_dtype", "float32"))
    self.graphdef, params = nnx.split(model)
    self.learner_shardings = param_shardings(params, self.mesh, LEARNER_RULES)
    self.sampler_shardings = param_shardings(params, self.mesh, SAMPLER_RULES)
    self.params = jax.device_put(params, self.learner_shardings)

    self.formatter = PromptFormatter(self.tokenizer, template=c.data.template, instruction=c.data.instruction,
                                     max_prompt_tokens=c.data.max_prompt_tokens)
    train, heldout = load_examples(c.data)
    self.train_examples = self._fitting(train, "training")
    self.heldout = self._fitting(heldout, "held-out")[:c.eval.num_prompts]
    self.iterator = PromptIterator(self.train_examples, c.rl.prompts_per_step, c.data.seed)
    self.pool = RewardPool(num_workers=c.reward.workers, timeout_s=c.reward.timeout_s)
    self.eos_ids = eos_ids_for(model, self.tokenizer)
    sampler = programs.train_sampler(c, self.graphdef, self.eos_ids, self.formatter.pad_id)
    self._sampler_cast = programs.sampler_cast(c, self.sampler_shardings, self.learner_shardings)
    self.collector = RolloutCollector(sampler, self.formatter, self.tokenizer, self.pool, c.reward.fn,
                                      c.rl.samples_per_prompt, plan.sampler_rows, self.mesh)

    self.optimizer = programs.optimizer(c, plan)
    opt_abstract = jax.eval_shape(self.optimizer.init, self.params)
    self.opt_state = jax.jit(self.optimizer.init, out_shardings=opt_state_shardings(
        opt_abstract, self.params, self.learner_shardings, self.mesh))(self.params)
    self.learner = programs.learner(c, plan, self.graphdef, self.optimizer, self.mesh, self.learner_shardings)
    self.updater = Updater(self.learner, self.mesh, plan.micro_batch_size,
                           "token_mean" if c.mode == "sft" else c.rl.loss_aggregation, c.rl.filter_normalization)
    # The KL reference is the initial policy; with kl_beta == 0 it is never kept nor run.
    self.ref_params = jax.tree.map(jnp.copy, self.params) if c.rl.kl_beta > 0 else None
    self._evaluator = None

    self.checkpointer = Checkpointer(paths.join(workdir, "checkpoints"), keep=c.train.keep_checkpoints,
                                     read_only=read_only)
    self.step = 0
    self.resumed = False
    if (resume or read_only) and self.checkpointer.latest_step() is not None:
      if resume_step is not None and not read_only:
        self.checkpointer.set_aside_after(resume_step)
      try:
        self.params, self.opt_state, meta = self.checkpointer.restore(self.params, self.opt_state, resume_step)
      except CheckpointError as e:
        self.checkpointer.close()  # Orbax's threads must not outlive the stopped run (a traceback at exit)
        self.pool.close()
        raise RunStopped(str(e)) from None
      self.step = int(meta["step"])
      self.iterator.restore(meta["data"])
      self.resumed = True
      log.info("resumed from step %d (%s)", self.step, self.checkpointer.directory)
    self.metrics = None if read_only else MetricsWriter(workdir, resume_step=self.step if self.resumed else None)
    self.eval_log = JsonlLog(paths.join(workdir, "eval.jsonl")) if not read_only and is_main_process() else None
    self._stop_requested = False

  def _fitting(self, examples, what):
    ok = self.formatter.fits(examples)
    kept = [e for e, f in zip(examples, ok) if f]
    if len(kept) < len(examples):
      log.warning("dropped %d %s examples longer than data.max_prompt_tokens=%d", len(examples) - len(kept), what,
                  self.config.data.max_prompt_tokens)
    if not kept:
      raise ValueError(f"no {what} example fits in data.max_prompt_tokens={self.config.data.max_prompt_tokens}")
    return kept

  # --- one step ---------------------------------------------------------------------------------------------

  def sampler_params(self):
    """The learner's parameters laid out for the sampler (no copy when the two layouts agree), in the compute dtype
    (cast on device) when that differs from the storage dtype."""
    if self._sampler_cast is not None:
      return self._sampler_cast(self.params)
    return jax.device_put(self.params, self.sampler_shardings)

  def train_step(self) -> dict:
    if self.config.mode == "sft":
      return self.sft_step()
    c, plan = self.config, self.plan
    G, R = c.rl.samples_per_prompt, plan.rows_per_batch
    t_step = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(c.train.seed), self.step)
    examples = self.iterator.next_batch()
    result = UpdateResult(self.params, self.opt_state)
    rewards, kept, truncated, lengths, timed_out, errors = [], 0, [], [], 0, 0
    self.first_reward_error = None
    sample_s = reward_s = 0.0
    calls = 0
    slots0, wasted0 = self.collector.slot_steps, self.collector.wasted_slot_steps
    if c.rl.algo == "grpo":
      # Standard GRPO: sample a micro-batch, score it, backprop it; repeat; one update at the end.
      grads = self.learner.zero_grads(self.params)
      per_call = plan.sampler_rows // G
      sp = self.sampler_params()
      for i in range(0, len(examples), per_call):
        sc = self.collector.collect(sp, examples[i:i + per_call], jax.random.fold_in(key, i))
        adv = group_advantages(sc.rewards, G, c.rl.advantage)
        rows = np.arange(sc.batch.num_rows)
        # Normalized over the R rows of the whole update (exact for seq_mean/constant_length; token_mean uses this
        # micro-batch's token count, as standard implementations do, since later micro-batches are not sampled yet).
        weights = self.updater.weights(sc.batch, rows, rows) * (sc.batch.num_rows / R)
        t0 = time.perf_counter()
        grads = self.updater.accumulate(self.params, grads, self.ref_params, sc.batch, adv, weights, rows, result)
        result.seconds += time.perf_counter() - t0
        sample_s, reward_s, calls = sample_s + sc.sample_s, reward_s + sc.reward_s, calls + sc.sampler_calls
        rewards.append(sc.rewards), truncated.append(sc.truncated), lengths.append(sc.batch.completion_mask_RxN.sum(1))
        timed_out += int(sc.timed_out.sum())
        errors += sc.num_errors
        self.first_reward_error = self.first_reward_error or sc.first_error
      t0 = time.perf_counter()
      self.params, self.opt_state, norm = self.learner.apply(self.params, self.opt_state, grads)
      result.grad_norm, result.updates = float(norm), 1
      jax.block_until_ready(self.params)
      result.seconds += time.perf_counter() - t0
      kept = R
    else:
      sc = self.collector.collect(self.sampler_params(), examples, key)
      sample_s, reward_s, calls = sc.sample_s, sc.reward_s, sc.sampler_calls
      rewards, truncated, lengths = [sc.rewards], [sc.truncated], [sc.batch.completion_mask_RxN.sum(1)]
      timed_out, errors, self.first_reward_error = int(sc.timed_out.sum()), sc.num_errors, sc.first_error
      adv = group_advantages(sc.rewards, G, c.rl.advantage)
      all_rows = np.arange(R)
      if c.rl.algo in ("dash", "pg"):
        keep = keep_mask(adv, c.rl.filter_threshold if plan.filtering else None)
        rows = np.flatnonzero(keep)
        kept = len(rows)
        self.params, self.opt_state = self.updater.step(self.params, self.opt_state, self.ref_params, sc.batch, adv,
                                                        rows, all_rows, result)
      elif c.rl.algo == "ppo_multi":
        kept = R
        for _ in range(plan.epochs_per_batch):
          self.params, self.opt_state = self.updater.step(self.params, self.opt_state, self.ref_params, sc.batch,
                                                          adv, all_rows, all_rows, result)
      else:  # ppo_mini
        kept = R
        for rows in np.split(all_rows, plan.updates_per_batch):
          self.params, self.opt_state = self.updater.step(self.params, self.opt_state, self.ref_params, sc.batch,
                                                          adv, rows, rows, result)
    self.step += 1
    rewards, truncated, lengths = np.concatenate(rewards), np.concatenate(truncated), np.concatenate(lengths)
    s = result.stats
    gen_tokens = float(lengths.sum())
    return {
        "step": self.step, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "kept_fraction": kept / R, "micro_steps": result.micro_steps, "sampler_calls": calls,
        "optimizer_updates": result.updates, "update_skipped": result.skipped,
        "sample_s": sample_s, "reward_s": reward_s, "update_s": result.seconds,
        "step_s": time.perf_counter() - t_step, "tokens_per_s": gen_tokens / max(sample_s, 1e-9),
        "response_len": float(lengths.mean()), "truncated_fraction": float(truncated.mean()),
        "kl": (s["kl"] / s["weight"]) if c.rl.kl_beta > 0 and s["weight"] > 0 else None,
        "pg_loss": s["pg_loss"], "clip_frac": (s["clip_frac"] / s["weight"]) if s["weight"] > 0 else 0.0,
        "grad_norm": result.grad_norm if result.updates else None, "reward_timeouts": timed_out,
        "reward_errors": errors, "decode_slot_steps": self.collector.slot_steps - slots0,
        "wasted_slot_fraction": (self.collector.wasted_slot_steps - wasted0) / max(
            self.collector.slot_steps - slots0, 1),
        "epoch": self.iterator.epoch,
    }

  def sft_step(self) -> dict:
    c = self.config
    t_step = time.perf_counter()
    examples = self.iterator.next_batch()
    eos = self.tokenizer.eos_token_id
    batch, cut = sft_batch(self.formatter, self.tokenizer, examples, c.sampling.max_new_tokens,
                           c.data.solution_field, eos)
    rows = np.arange(batch.num_rows)
    result = UpdateResult(self.params, self.opt_state)
    self.params, self.opt_state = self.updater.step(self.params, self.opt_state, None, batch,
                                                    np.ones(batch.num_rows, np.float32), rows, rows, result)
    self.step += 1
    s = result.stats
    return {"step": self.step, "nll": s["entropy_proxy"] / max(s["weight"], 1e-9), "micro_steps": result.micro_steps,
            "optimizer_updates": result.updates, "update_s": result.seconds, "step_s": time.perf_counter() - t_step,
            "target_len": float(batch.completion_mask_RxN.sum(1).mean()), "targets_cut": cut,
            "grad_norm": result.grad_norm, "epoch": self.iterator.epoch, "kept_fraction": 1.0,
            "reward_mean": float("nan")}

  # --- evaluation, checkpoints, the loop --------------------------------------------------------------------

  def evaluate(self, seed: int = 1234) -> dict:
    c = self.config
    if self._evaluator is None:
      self._evaluator = Evaluator(
          self.graphdef, self.formatter, self.tokenizer, self.pool, c.reward.fn, samples=c.eval.samples,
          temperature=c.eval.temperature, max_new_tokens=c.eval.max_new_tokens or c.sampling.max_new_tokens,
          batch_size=c.eval.batch_size, eos_ids=self.eos_ids, pad_id=self.formatter.pad_id, mesh=self.mesh,
          batching=programs.batching_options(c))
    out = self._evaluator(self.sampler_params(), self.heldout, seed)
    record = {k: v for k, v in out.items() if k != "texts"}
    record["step"] = self.step
    if self.eval_log is not None:
      self.eval_log.append(record)
    return out

  def save(self):
    self.checkpointer.save(self.step, self.params, self.opt_state,
                           {"step": self.step, "data": self.iterator.state(), "seed": int(self.config.train.seed)})

  def request_stop(self, signum=signal.SIGTERM, *_):
    self._stop_requested = True
    self._stop_signal = signal.Signals(signum).name

  def run(self, progress: bool = True, stop_at: int | None = None) -> dict:
    """Trains to train.num_steps (or `stop_at`), evaluating before/after; returns a summary."""
    from tqdm.auto import tqdm

    if self.read_only:
      raise RuntimeError("a Trainer opened with read_only=True evaluates a run; it does not train")
    c = self.config
    summary = {"workdir": self.workdir}
    # Ctrl-C and a scheduler's SIGTERM alike: finish the current step, checkpoint, stop.
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
      signal.signal(s, self.request_stop)
    try:
      if c.eval.before and not self.resumed:
        summary["before"] = self._eval_and_report("before training")
      end = c.train.num_steps if stop_at is None else min(stop_at, c.train.num_steps)
      steps_run, self._rewarded, self._warned_errors = 0, False, False
      bar = tqdm(total=c.train.num_steps, initial=self.step, disable=not progress, desc=f"{c.rl.algo}",
                 dynamic_ncols=True)
      while self.step < end:
        m = self.train_step()
        bad = _non_finite(m)  # metrics are identical on every process, so all of them stop here together
        if bad:
          bar.close()
          last = self.checkpointer.latest_step()
          raise NonFiniteError(
              f"step {m['step']} produced a non-finite {', '.join(bad)}; stopped without saving that step "
              f"(last good checkpoint: {'none' if last is None else f'step {last}'} in {self.checkpointer.directory})")
        self.metrics.write(m)
        steps_run += 1
        self._check_rewards(m, steps_run)
        if c.mode == "sft":
          bar.set_postfix(nll=f"{m['nll']:.3f}", s=f"{m['step_s']:.1f}")
        else:
          bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kept=f"{m['kept_fraction']:.2f}",
                          s=f"{m['step_s']:.1f}")
        bar.update(1)
        if c.eval.every and self.step % c.eval.every == 0 and self.step < c.train.num_steps:
          self._eval_and_report(f"step {self.step}")
        if any_host(self._stop_requested):
          self.save()
          bar.close()
          print(f"\nstopped by {self._stop_signal} after step {self.step}; checkpoint saved in "
                f"{self.checkpointer.directory}; continue with --resume (or --auto_resume)", flush=True)
          summary["stopped_at"] = self.step
          return summary
        if c.train.checkpoint_every and self.step % c.train.checkpoint_every == 0:
          self.save()
      bar.close()
      if self.checkpointer.latest_step() != self.step:
        self.save()
      if self.step >= c.train.num_steps and c.eval.after:
        summary["after"] = self._eval_and_report("after training")
      if is_main_process():
        summary["curve"] = plot_curve(self.workdir, title=f"{c.rl.algo} on {c.data.task} ({c.model.source})")
      return summary
    finally:
      for s, h in previous.items():
        signal.signal(s, h)

  def _check_rewards(self, m: dict, steps_run: int):
    """Stops a run whose scorer raises and has scored nothing yet; later errors are counted and warned about once."""
    if m.get("reward_errors") is None:  # sft
      return
    self._rewarded = self._rewarded or m["reward_mean"] > 0
    if not m["reward_errors"]:
      return
    fn, first = self.config.reward.fn, self.first_reward_error
    if not self._rewarded and steps_run <= REWARD_ERROR_STEPS:
      raise RewardError(f"step {m['step']}: reward.fn={fn!r} raised on {m['reward_errors']} completions and no "
                        f"completion has scored above 0 yet; first error: {first}. Stopped: check that reward.fn "
                        f"fits the data (no checkpoint was written for this step)")
    if not self._warned_errors:
      self._warned_errors = True
      log.warning("step %d: reward.fn=%r raised on %d completions (scored 0; counted as reward_errors in "
                  "metrics.jsonl); first error: %s", m["step"], fn, m["reward_errors"], first)

  def _eval_and_report(self, when: str) -> dict:
    out = self.evaluate()
    if out["reward_errors"] and out["accuracy"] == 0 and when == "before training":
      raise RewardError(f"evaluation {when}: reward.fn={self.config.reward.fn!r} raised on {out['reward_errors']} "
                        f"of {len(out['texts'])} completions and none scored above 0; first error: "
                        f"{out['first_reward_error']}. Stopped: check that reward.fn fits the data")
    if is_main_process():
      print(f"held-out accuracy {when}: {out['accuracy']:.3f} +/- {out['stderr']:.3f} (mean@{out['samples']} over "
            f"{out['num_prompts']} prompts, {out['seconds']:.0f}s)", flush=True)
    return {k: v for k, v in out.items() if k != "texts"}

  def close(self):
    if self.metrics is not None:
      self.metrics.close()
    if self.eval_log is not None:
      self.eval_log.close()
    self.pool.close()
    self.checkpointer.close()
