"""The training loop: collect (sample, score, advantages), the algorithm's updates, metrics; evaluate, log and
checkpoint.

Every algorithm (dash, pg, grpo, ppo_multi, ppo_mini, and SFT with mode="sft"; see `dashjax.rl.algorithms`) runs
through the same `train_step`: the algorithm decides when the trainer collects rows and which rows each of its
optimizer updates backprops. `train.num_steps` counts sampled batches; each is one optimizer update except for the
PPO variants.
"""

from __future__ import annotations

import logging
import math
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dashjax.config import validate
from dashjax.data import PromptFormatter, PromptIterator, load_examples
from dashjax.models.loading import load_model
from dashjax.train import plan as size_plan
from dashjax.parallel.distributed import any_host, is_main_process
from dashjax.parallel.mesh import LEARNER_RULES, SAMPLER_RULES, make_mesh, opt_state_shardings, param_shardings
from dashjax.rewards import RewardPool
from dashjax.rl.advantages import group_advantages
from dashjax.rl.algorithms import Sampled, algorithm
from dashjax.sampling.generate import eos_ids_for
from dashjax.store import paths
from dashjax.store.logs import JsonlLog
from dashjax.train.checkpoint import Checkpointer, CheckpointError
from dashjax.train.evaluate import Evaluator
from dashjax.train import programs
from dashjax.train.metrics import MetricsWriter, plot_curve
from dashjax.train.rollouts import RolloutCollector
from dashjax.train.sft import sft_batch
from dashjax.train.steplog import StepLog
from dashjax.train.update import TrainState, Updater, UpdateResult

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
    self.algo = algorithm(config)
    if not read_only:
      paths.makedirs(workdir)
    c, plan = config, self.plan
    self.mesh = make_mesh(plan.mesh_shape)
    model, self.tokenizer = model_and_tokenizer or load_model(c.model.source, dtype=c.model.dtype,
                                                              param_dtype=c.model.param_dtype)
    self.graphdef, params = nnx.split(model)
    self.learner_shardings = param_shardings(params, self.mesh, LEARNER_RULES)
    self.sampler_shardings = param_shardings(params, self.mesh, SAMPLER_RULES)
    params = jax.device_put(params, self.learner_shardings)

    self.formatter = PromptFormatter(self.tokenizer, template=c.data.template, instruction=c.data.instruction,
                                     max_prompt_tokens=c.data.max_prompt_tokens)
    train, heldout = load_examples(c.data)
    self.train_examples = self._fitting(train, "training")
    self.heldout = self._fitting(heldout, "held-out")[:c.eval.num_prompts]
    self.iterator = PromptIterator(self.train_examples, c.rl.prompts_per_step, c.data.seed)
    self.pool = RewardPool(num_workers=c.reward.workers, timeout_s=c.reward.timeout_s)
    self.eos_ids = eos_ids_for(model, self.tokenizer)
    self.programs = programs.build(c, plan, self.graphdef, self.mesh, self.learner_shardings,
                                   self.sampler_shardings, self.eos_ids, self.formatter.pad_id)
    self.collector = RolloutCollector(self.programs.sampler, self.formatter, self.tokenizer, self.pool, c.reward.fn,
                                      c.rl.samples_per_prompt, plan.sampler_rows, self.mesh)

    self.optimizer = self.programs.optimizer
    opt_abstract = jax.eval_shape(self.optimizer.init, params)
    opt_state = jax.jit(self.optimizer.init, out_shardings=opt_state_shardings(
        opt_abstract, params, self.learner_shardings, self.mesh))(params)
    self.learner = self.programs.learner
    self.updater = Updater.from_config(c, plan, self.learner, self.mesh)
    # The KL reference is the initial policy; with kl_beta == 0 it is never kept nor run.
    ref_params = jax.tree.map(jnp.copy, params) if self.learner.loss_cfg.kl_beta > 0 else None
    self.state = TrainState(params, opt_state, ref_params)
    self._evaluator = None

    self.checkpointer = Checkpointer(paths.join(workdir, "checkpoints"), keep=c.train.keep_checkpoints,
                                     read_only=read_only)
    self.step = 0
    self.resumed = False
    if (resume or read_only) and self.checkpointer.latest_step() is not None:
      if resume_step is not None and not read_only:
        self.checkpointer.set_aside_after(resume_step)
      try:
        params, opt_state, meta = self.checkpointer.restore(params, opt_state, resume_step)
        self.state = self.state._replace(params=params, opt_state=opt_state)
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

  @property
  def params(self):
    return self.state.params

  @property
  def opt_state(self):
    return self.state.opt_state

  @property
  def ref_params(self):
    return self.state.ref_params

  # --- one step ---------------------------------------------------------------------------------------------

  def sampler_params(self):
    """The learner's parameters laid out for the sampler (no copy when the two layouts agree), in the compute dtype
    (cast on device) when that differs from the storage dtype."""
    if self.programs.cast is not None:
      return self.programs.cast(self.params)
    return jax.device_put(self.params, self.sampler_shardings)

  def train_step(self) -> dict:
    """Collect -> advantages -> the algorithm's updates -> metrics, the same for every algorithm."""
    log = StepLog(self.collector, kl=self.learner.loss_cfg.kl_beta > 0)
    source = _StepSource(self, jax.random.fold_in(jax.random.key(self.config.train.seed), self.step), log)
    result = UpdateResult()
    for parts in self.algo.updates(self.iterator.next_batch(), source):
      self.state = self.updater.update(self.state, log.watch(parts), result)
    self.step += 1
    self.first_reward_error = log.first_error
    return log.metrics(self.step, self.iterator.epoch, result)

  # --- evaluation, checkpoints, the loop --------------------------------------------------------------------

  def evaluate(self, seed: int = 1234) -> dict:
    c = self.config
    if self._evaluator is None:
      self._evaluator = Evaluator(self.programs.eval_sampler, self.formatter, self.tokenizer, self.pool, c.reward.fn,
                                  rows=programs.eval_rows(c), mesh=self.mesh)
    out = self._evaluator(self.sampler_params(), self.heldout, seed)
    record = {k: v for k, v in out.items() if k != "texts"}
    record["step"] = self.step
    if self.eval_log is not None:
      self.eval_log.append(record)
    return out

  def save(self):
    self.checkpointer.save(self.step, self.state.params, self.state.opt_state,
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
      bar = tqdm(total=c.train.num_steps, initial=self.step, disable=not progress, desc=self.algo.name,
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
        if "nll" in m:  # sft
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
        summary["curve"] = plot_curve(self.workdir, title=f"{self.algo.name} on {c.data.task} ({c.model.source})")
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


class _StepSource:
  """The collect step of one training step, as the algorithms ask for it: sampled, scored rows with their group
  advantages (`sample`), or gold completions (`gold`, SFT); each recorded in the step's log."""

  def __init__(self, trainer: Trainer, key, log: StepLog):
    self.trainer, self.key, self.log = trainer, key, log
    self._sampler_params = None

  def sample(self, examples, fold: int | None = None) -> Sampled:
    t, c = self.trainer, self.trainer.config
    if self._sampler_params is None:  # once per step: the parameters do not change between its collect calls
      self._sampler_params = t.sampler_params()
    key = self.key if fold is None else jax.random.fold_in(self.key, fold)
    sc = t.collector.collect(self._sampler_params, examples, key)
    self.log.scored.append(sc)
    return Sampled(sc.batch, group_advantages(sc.rewards, c.rl.samples_per_prompt, c.rl.advantage), sc.rewards)

  def gold(self, examples) -> Sampled:
    t, c = self.trainer, self.trainer.config
    batch, cut = sft_batch(t.formatter, t.tokenizer, examples, c.sampling.max_new_tokens, c.data.solution_field,
                           t.tokenizer.eos_token_id)
    self.log.gold.append((batch, cut))
    return Sampled(batch, np.ones(batch.num_rows, np.float32))
