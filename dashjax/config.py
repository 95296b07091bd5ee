"""The run configuration: defaults, and up-front validation that says which field must divide which.

Configs are `ml_collections.ConfigDict`s built by `get_config()` in `configs/*.py`, on top of `base_config()`, and
overridden from the command line (`--config.rl.algo=grpo`). `validate(config)` runs before anything is loaded and
returns the derived batch plan, so a bad combination fails in a second, not after model loading.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections

# The algorithms (rl.algo) and their own checks: dashjax.rl.algorithms.


def _size(default: int):
  # A number or "auto", from a config file or --config.x.y=auto (a plain int field would refuse the string).
  return ml_collections.FieldReference(default, field_type=object)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "rl"  # "rl" or "sft"
  # dtype: compute; param_dtype: storage of parameters, gradients and optimizer moments (keep float32: an update at
  # lr 3e-6 is below half a bfloat16 ulp of almost every weight and would round away)
  c.model = dict(source="smollm2-135m-instruct", dtype="float32", param_dtype="float32")
  c.data = dict(source="gym", task="basic_arithmetic", task_kwargs={}, train_size=2000, heldout_size=200, seed=0,
                template="chat", instruction="", max_prompt_tokens=64, path="", heldout_path="", name="",
                config_name="", split="train", heldout_split="", problem_field="problem", answer_field="answer",
                solution_field="solution",
                # file/hub rows that cannot be used (broken JSON, empty problem, missing gold answer): "skip" drops
                # them with one warning that counts them by reason and names the first; "error" stops at the first
                bad_rows="skip")
  c.reward = dict(fn="gym", workers=2, timeout_s=5.0)
  c.rl = dict(
      algo="dash",
      prompts_per_step=8,  # P: prompts per optimizer update (per sampled batch for the PPO variants)
      samples_per_prompt=4,  # G
      updates_per_batch=1,  # ppo_mini: optimizer updates per sampled batch (mini-batches of whole groups)
      epochs_per_batch=1,  # ppo_multi: passes (one update each) over the sampled batch
      filter_threshold=0.1,  # dash: keep rows with |advantage| > threshold
      filter_normalization="sampled",  # "sampled": divide by rows sampled; "kept": by rows kept
      advantage="grpo",  # grpo (mean/std), mean (Dr. GRPO), rloo
      kl_beta=0.0, kl_estimator="k3",
      clip_eps=0.2,
      loss_aggregation="constant_length",  # token_mean, seq_mean, constant_length (the paper's dr_grpo)
  )
  # batch_size and micro_batch_size may be "auto": chosen at start-up by dashjax.train.plan
  c.sampling = dict(batch_size=_size(32), max_new_tokens=64, temperature=0.9, top_k=0, top_p=1.0, share_prefix=True,
                    # continuous batching: rows that end stop costing decode compute (their slot takes a queued row,
                    # or live rows move into a smaller compiled batch); false: the static one-program sampler.
                    # slots: decode slots per call (0: every row of the call); min_slots: the smallest batch
                    **_sampler_defaults("continuous", "slots", "min_slots"))
  c.train = dict(micro_batch_size=_size(4), num_steps=20, learning_rate=3e-6, lr_schedule="constant", warmup_steps=0,
                 weight_decay=0.0, max_grad_norm=1.0, seed=0, checkpoint_every=10, keep_checkpoints=2,
                 sft_epochs=1,
                 # Backprop runs each prompt once per group of G rows (exact; applies when micro_batch_size % G == 0)
                 share_prompts=True,
                 # Training memory (each computes the same gradient): per-layer rematerialization (none, full,
                 # save_dots), completion log-probs `logprob_chunk` positions at a time (0: all at once), and the
                 # learner's attention (auto, plain, blockwise, fused) with `attention_block` keys per block.
                 # scan_layers runs the layers as one lax.scan (compile time; see docs/paper_scale.md).
                 remat="none", logprob_chunk=0, attention="auto", attention_block=512, scan_layers=False)
  c.eval = dict(num_prompts=200, samples=1, temperature=0.0, max_new_tokens=0, batch_size=64, before=True,
                after=True, every=0)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1: all remaining devices
  return c


def _sampler_defaults(*names) -> dict:
  # The sampler's own defaults (SamplingConfig), so that a run and a direct sampler user get the same ones.
  from dashjax.sampling.sampler import SamplingConfig

  return {name: getattr(SamplingConfig, name) for name in names}


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Derived sizes, computed once from the config."""

  rows_per_batch: int  # R = P * G rows sampled per batch
  sampler_rows: int  # rows per sampler call
  sampler_calls: int  # sampler calls per sampled batch
  micro_batch_size: int
  micro_steps_unfiltered: int  # micro-steps per update without filtering
  updates_per_batch: int
  epochs_per_batch: int
  filtering: bool
  learner_prompt_group: int  # rows per prompt forward in backprop: G with train.share_prompts, else 1
  mesh_shape: tuple[int, int, int]  # (data, fsdp, tensor)


class ConfigError(ValueError):
  pass


def _mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
  if sizes.count(-1) > 1:
    raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1 (all remaining devices)")
  fixed = 1
  for s in sizes:
    if s != -1:
      if s < 1:
        raise ConfigError(f"mesh sizes must be >= 1 or -1, got {sizes}")
      fixed *= s
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(f"{num_devices} devices are not divisible by the fixed mesh axes ({fixed})")
    sizes[sizes.index(-1)] = num_devices // fixed
  if sizes[0] * sizes[1] * sizes[2] > num_devices:
    raise ConfigError(f"mesh.data * mesh.fsdp * mesh.tensor = {sizes[0] * sizes[1] * sizes[2]} is more than the "
                      f"{num_devices} devices available")
  return tuple(sizes)


def _non_finite_fields(node, prefix: str = ""):
  """Dotted names of the float fields (at any depth) that hold NaN or +/-inf."""
  items = node.items() if hasattr(node, "items") else ()
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _non_finite_fields(value, name + ".")
    elif isinstance(value, float) and not math.isfinite(value):
      yield name, value


def _check_fields_before_load(c, check_model_source: bool):
  """Fields that used to fail only after the model loaded (or, for reward.fn, after the first sampling step)."""
  sp, rw, d = c.sampling, c.reward, c.data
  if check_model_source:
    from dashjax.models.loading import source_problem

    problem = source_problem(str(c.model.source))
    if problem:
      raise ConfigError(problem)
  from dashjax.sampling.sampler import SamplingConfig

  try:  # the sampler's own bounds, checked where they are written and named here as config fields
    SamplingConfig(max_new_tokens=int(sp.max_new_tokens), temperature=float(sp.temperature), top_k=int(sp.top_k),
                   top_p=float(sp.top_p), slots=int(sp.slots), min_slots=int(sp.min_slots))
  except ValueError as e:
    raise ConfigError(f"sampling.{e}") from None
  if float(rw.timeout_s) <= 0:
    raise ConfigError(f"reward.timeout_s={rw.timeout_s} must be > 0 (seconds allowed to score one completion)")
  if int(rw.workers) < 0:
    raise ConfigError(f"reward.workers={rw.workers} must be >= 0 (0 scores in this process)")
  for name in ("train_size", "heldout_size"):
    if int(d[name]) < 0:
      raise ConfigError(f"data.{name}={d[name]} must be >= 0 (0: all examples)")
  from dashjax.data.tables import BAD_ROWS

  if d.bad_rows not in BAD_ROWS:
    raise ConfigError(f"data.bad_rows={d.bad_rows!r} must be 'skip' (drop unusable rows, counted in one warning) or "
                      "'error' (stop at the first)")
  if int(c.eval.samples) > 1 and float(c.eval.temperature) == 0:
    raise ConfigError(f"eval.samples={c.eval.samples} with eval.temperature=0 would repeat one greedy answer; set "
                      f"eval.samples=1 or eval.temperature > 0 (e.g. 1.0)")
  if int(c.train.checkpoint_every) < 0:
    raise ConfigError(f"train.checkpoint_every={c.train.checkpoint_every} must be >= 0 (0: only at the end)")
  ev, tr = c.eval, c.train
  for name, value, low, why in (
      ("eval.num_prompts", ev.num_prompts, 1, ""), ("eval.samples", ev.samples, 1, ""),
      ("eval.batch_size", ev.batch_size, 1, ""), ("eval.max_new_tokens", ev.max_new_tokens, 0, " (0: as sampling)"),
      ("eval.every", ev.every, 0, " (0: only before and after)"), ("train.warmup_steps", tr.warmup_steps, 0, ""),
      ("train.seed", tr.seed, 0, ""), ("data.seed", d.seed, 0, ""), ("train.sft_epochs", tr.sft_epochs, 1, "")):
    if int(value) < low:
      raise ConfigError(f"{name}={value} must be >= {low}{why}")
  for name, value, low, strict in (("eval.temperature", ev.temperature, 0.0, False),
                                   ("train.weight_decay", tr.weight_decay, 0.0, False),
                                   ("train.max_grad_norm", tr.max_grad_norm, 0.0, False),  # 0: no clipping
                                   ("rl.clip_eps", c.rl.clip_eps, 0.0, True)):
    if float(value) < low or (strict and float(value) == low):
      raise ConfigError(f"{name}={value} must be {'>' if strict else '>='} {low}")
  if d.source == "gym":
    from reasoning_gym.factory import DATASETS

    if d.task not in DATASETS:
      close = sorted(n for n in DATASETS if d.task and (d.task in n or n in d.task))[:5]
      raise ConfigError(f"data.task={d.task!r} is not a reasoning-gym task" +
                        (f"; did you mean one of {close}?" if close else f" ({len(DATASETS)} exist, e.g. "
                         f"basic_arithmetic, gsm_symbolic)"))
  elif d.source in ("file", "hub"):
    if d.get("task_kwargs"):
      raise ConfigError(f"data.task_kwargs={dict(d.task_kwargs)} only apply to data.source='gym'; remove them (a "
                        f"{d.source} dataset is read as it is)")
    from reasoning_gym.factory import DATASETS

    if d.task in DATASETS:  # e.g. base_config's default, or a task meant for data.source='gym'
      raise ConfigError(f"data.task={d.task!r} names a reasoning-gym task, but data.source={d.source!r} reads its "
                        f"rows from data.{'path' if d.source == 'file' else 'name'} and uses data.task only as a "
                        f"label: set data.source='gym' to train on that task, or label the data (e.g. "
                        f"data.task='math')")
  if rw.fn == "gym" and d.source != "gym":
    raise ConfigError(f"reward.fn='gym' scores reasoning-gym items, but data.source={d.source!r}: use "
                      f"reward.fn='math' (or another scorer) for {d.source} data")
  if ":" in rw.fn:
    from dashjax.rewards.pool import load_scorer

    try:
      obj = load_scorer(rw.fn)
    except Exception as e:  # ImportError, AttributeError, or the module's own error
      raise ConfigError(f"reward.fn={rw.fn!r} does not load ({type(e).__name__}: {e}); give an importable "
                        f"'module:function'") from None
    if not callable(obj):
      raise ConfigError(f"reward.fn={rw.fn!r} is not callable")


def validate(c, num_devices: int | None = None, *, check_model_source: bool = True) -> BatchPlan:
  """Checks the config and returns the batch plan; raises ConfigError naming the fields and the fix.

  `check_model_source=False` for shape-only work (the fit check, benchmarks on stand-in weights), where the
  model named in the config is never loaded."""
  for name, value in _non_finite_fields(c):
    raise ConfigError(f"{name}={value} must be a finite number")
  rl, tr, sp = c.rl, c.train, c.sampling
  for name, v in (("sampling.batch_size", sp.batch_size), ("train.micro_batch_size", tr.micro_batch_size)):
    if isinstance(v, str) and v.lower() == "auto":
      raise ConfigError(f"{name}='auto' is chosen by the planner at start-up (dashjax-train, or "
                        f"dashjax.train.plan.resolve(config) before Trainer); dashjax-plan shows its table")
    if not isinstance(v, int) or isinstance(v, bool):
      raise ConfigError(f"{name}={v!r} must be a whole number of rows or 'auto'")
  if c.mode not in ("rl", "sft"):
    raise ConfigError(f"mode={c.mode!r} must be 'rl' or 'sft'")
  from dashjax.rl.algorithms import algorithm

  algo = algorithm(c)
  P, G, mb, sb = rl.prompts_per_step, rl.samples_per_prompt, tr.micro_batch_size, sp.batch_size
  for name, v in (("rl.prompts_per_step", P), ("rl.samples_per_prompt", G), ("train.micro_batch_size", mb),
                  ("sampling.batch_size", sb), ("train.num_steps", tr.num_steps),
                  ("rl.updates_per_batch", rl.updates_per_batch), ("rl.epochs_per_batch", rl.epochs_per_batch),
                  ("data.max_prompt_tokens", c.data.max_prompt_tokens)):
    if int(v) < 1:
      raise ConfigError(f"{name}={v} must be >= 1")
  algo.check()
  G, sampler_rows = algo.group_size, algo.sampler_rows
  R = P * G
  if R % mb:
    raise ConfigError(f"train.micro_batch_size={mb} must divide rl.prompts_per_step * rl.samples_per_prompt = "
                      f"{P} * {G} = {R} rows per batch")
  if rl.filter_threshold < 0:
    raise ConfigError(f"rl.filter_threshold={rl.filter_threshold} must be >= 0")
  # Each field's allowed values live with the code that uses them.
  from dashjax.data.prompts import TEMPLATES
  from dashjax.data.sources import SOURCES
  from dashjax.models.compute import ATTENTION_IMPLS, REMAT_POLICIES
  from dashjax.models.config import DTYPE_NAMES
  from dashjax.rl.advantages import ESTIMATORS
  from dashjax.rl.batching import LOSS_AGGREGATIONS, NORMALIZATIONS
  from dashjax.rl.losses import KL_ESTIMATORS
  from dashjax.train.learner import LR_SCHEDULES

  choices = {"rl.filter_normalization": (rl.filter_normalization, NORMALIZATIONS),
             "rl.advantage": (rl.advantage, ESTIMATORS), "rl.kl_estimator": (rl.kl_estimator, KL_ESTIMATORS),
             "rl.loss_aggregation": (rl.loss_aggregation, LOSS_AGGREGATIONS),
             "train.lr_schedule": (tr.lr_schedule, LR_SCHEDULES), "data.template": (c.data.template, TEMPLATES),
             "data.source": (c.data.source, SOURCES), "model.dtype": (c.model.dtype, DTYPE_NAMES),
             "model.param_dtype": (c.model.param_dtype, DTYPE_NAMES), "train.remat": (tr.remat, REMAT_POLICIES),
             "train.attention": (tr.attention, ATTENTION_IMPLS)}
  _check_fields_before_load(c, check_model_source)
  if int(tr.keep_checkpoints) < 1:
    raise ConfigError(f"train.keep_checkpoints={tr.keep_checkpoints} must be >= 1 (with 0 no checkpoint would be "
                      f"kept and the run could not be resumed)")
  if int(tr.logprob_chunk) < 0:
    raise ConfigError(f"train.logprob_chunk={tr.logprob_chunk} must be >= 0 (0: the whole completion at once)")
  if int(tr.attention_block) < 1:
    raise ConfigError(f"train.attention_block={tr.attention_block} must be >= 1")
  from dashjax.rewards.pool import scorer_names

  if c.reward.fn not in scorer_names() and ":" not in c.reward.fn:
    raise ConfigError(f"reward.fn={c.reward.fn!r} is not one of {scorer_names()} or a 'module:function' path")
  for name, (value, allowed) in choices.items():
    if value not in allowed:
      raise ConfigError(f"{name}={value!r} is not one of {allowed}")
  if rl.kl_beta < 0:
    raise ConfigError(f"rl.kl_beta={rl.kl_beta} must be >= 0 (0 disables the KL term and the reference model)")
  if tr.learning_rate <= 0:
    raise ConfigError(f"train.learning_rate={tr.learning_rate} must be > 0")
  mesh_shape = _mesh_shape(c.mesh, num_devices if num_devices is not None else jax.device_count())
  rows_axis = mesh_shape[0] * mesh_shape[1]  # batch rows are split over data and fsdp
  if mb % rows_axis:
    raise ConfigError(f"train.micro_batch_size={mb} must be divisible by mesh.data * mesh.fsdp = {rows_axis} "
                      f"(micro-batch rows are sharded over those axes)")
  if (sampler_rows // G) % rows_axis:
    raise ConfigError(f"each sampler call holds {sampler_rows // G} prompts ({algo.sampler_rows_field} "
                      f"/ rl.samples_per_prompt), which must be divisible by mesh.data * mesh.fsdp = {rows_axis}")
  prompt_group = 1
  if tr.share_prompts and G > 1 and mb % G == 0:
    prompt_group = G
  eval_prompts = max(1, c.eval.batch_size // max(c.eval.samples, 1))
  if eval_prompts % rows_axis:
    raise ConfigError(f"eval.batch_size={c.eval.batch_size} / eval.samples={c.eval.samples} = {eval_prompts} prompts "
                      f"per evaluation call must be divisible by mesh.data * mesh.fsdp = {rows_axis}")
  return BatchPlan(rows_per_batch=R, sampler_rows=sampler_rows, sampler_calls=R // sampler_rows,
                   micro_batch_size=mb, micro_steps_unfiltered=R // mb,
                   updates_per_batch=rl.updates_per_batch, epochs_per_batch=rl.epochs_per_batch,
                   filtering=algo.filtering, learner_prompt_group=prompt_group, mesh_shape=mesh_shape)
