"""The compiled programs of a training step, built from the config alone by `build`: one bundle for the trainer and
the ahead-of-time fit check beside it (`fit.py`, `dashjax-fit`), so that what is checked is what runs.

  sampler        `sampling.batch_size` rows (grpo: `train.micro_batch_size`) with their KV cache
  micro_step     one learner micro-batch: forward, backward, gradient accumulation
  apply          the optimizer update
  eval_sampler   the held-out evaluation's sampler call
  cast           the compute-dtype copy of the parameters the samplers read (only when storage and compute differ)

Each member exposes its jitted functions, which lower on abstract arrays as well as run on real ones:
`sampler.program` (static sampler) or `start_program`/`chunk_program`/`compact_program` (continuous),
`learner.micro_step`, `learner.apply_program(params, opt_state)`, `cast.cast`; `Programs.micro_batch` is the
micro-step's input in shapes only.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from dashjax.models.compute import ComputeOptions, cast_floats
from dashjax.models.config import resolve_dtype
from dashjax.parallel.mesh import LEARNER_RULES, fsdp_gather, row_constraint
from dashjax.rl.algorithms import algorithm
from dashjax.rl.batching import MicroBatches
from dashjax.sampling import Sampler, SamplingConfig, make_sampler
from dashjax.train.learner import Learner, LossConfig, make_optimizer


def compute_options(config, mesh) -> ComputeOptions:
  tr = config.train
  return ComputeOptions(remat=tr.remat, attention=tr.attention, attention_block=int(tr.attention_block),
                        scan_layers=bool(tr.scan_layers), gather=fsdp_gather(mesh, LEARNER_RULES),
                        constrain=row_constraint(mesh))


def loss_config(config) -> LossConfig:
  return LossConfig(**algorithm(config).loss_fields())


def optimizer(config, plan):
  c = config
  updates_total = c.train.num_steps * plan.updates_per_batch * plan.epochs_per_batch
  return make_optimizer(c.train.learning_rate, updates_total, warmup_steps=c.train.warmup_steps,
                        schedule=c.train.lr_schedule, weight_decay=c.train.weight_decay,
                        max_grad_norm=c.train.max_grad_norm)


def learner(config, plan, graphdef, opt, mesh, learner_shardings) -> Learner:
  return Learner(graphdef, opt, loss_config(config), config.data.max_prompt_tokens, param_shardings=learner_shardings,
                 prompt_group=plan.learner_prompt_group, compute=compute_options(config, mesh),
                 logprob_chunk=int(config.train.logprob_chunk))


def batching_options(config) -> dict:
  """The sampler's batching fields (SamplingConfig keywords): continuous batching unless sampling.continuous=false.

  Multi-process runs use the static sampler: the continuous one reads its live-row counts on the host between
  compiled chunks, which would need a cross-host gather per chunk."""
  sp = config.sampling
  continuous = bool(sp.continuous) and jax.process_count() == 1
  return dict(continuous=continuous, slots=int(sp.slots), min_slots=int(sp.min_slots))


def train_sampler(config, graphdef, eos_ids, pad_id: int):
  c = config
  return make_sampler(graphdef, SamplingConfig(
      max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature, top_k=c.sampling.top_k,
      top_p=c.sampling.top_p, samples_per_prompt=c.rl.samples_per_prompt, share_prefix=c.sampling.share_prefix,
      eos_ids=tuple(eos_ids), pad_id=pad_id, **batching_options(c)))


def eval_rows(config) -> int:
  """Rows per evaluation sampler call (whole groups of eval.samples)."""
  from dashjax.train.evaluate import rows_per_call

  return rows_per_call(int(config.eval.batch_size), max(int(config.eval.samples), 1))


def eval_sampling_config(config, eos_ids, pad_id: int) -> SamplingConfig:
  c = config
  return SamplingConfig(max_new_tokens=c.eval.max_new_tokens or c.sampling.max_new_tokens,
                        temperature=c.eval.temperature, samples_per_prompt=max(int(c.eval.samples), 1),
                        eos_ids=tuple(eos_ids), pad_id=pad_id, **batching_options(c))


class SamplerCast:
  """`params -> params` in the compute dtype, laid out for the sampler: the sampler reads half the bytes and holds
  half the memory of the stored copy. Made on device once per update, in two steps:

    cast    one jitted program: each chip casts its own shard (float32 is never gathered)
    gather  leaf by leaf to the sampler's layout; gathering the whole tree in one program made XLA stage every
            gathered leaf in temporaries too (5.8 GiB per chip for Qwen2.5-3B on a v5e-8), one leaf at a time
            stages at most the largest (the embedding)
  """

  def __init__(self, dtype, learner_shardings, sampler_shardings):
    self.sampler_shardings = sampler_shardings
    self.cast = jax.jit(lambda p: cast_floats(p, dtype), out_shardings=learner_shardings)

  def gather(self, low):
    return jax.tree.map(jax.device_put, low, self.sampler_shardings)

  def __call__(self, params):
    return self.gather(self.cast(params))


def sampler_cast(config, sampler_shardings, learner_shardings) -> SamplerCast | None:
  """The compute-dtype copy for the samplers; None when storage is compute (they read the stored parameters)."""
  dtype = resolve_dtype(config.model.dtype)
  if resolve_dtype(config.model.param_dtype) == dtype:
    return None
  return SamplerCast(dtype, learner_shardings, sampler_shardings)


@dataclasses.dataclass(frozen=True)
class Programs:
  optimizer: optax.GradientTransformation
  learner: Learner
  sampler: object  # Sampler or ContinuousSampler: the training rollouts (built in sft too, never called there)
  eval_sampler: object  # the held-out evaluation's
  cast: SamplerCast | None  # None when the samplers read the stored parameters
  micro_batch_size: int
  prompt_len: int
  new_tokens: int

  def micro_batch(self, sharding=None) -> dict:
    """One micro-batch as abstract arrays; `sharding(ndim)` lays each out (e.g. rows split over the mesh)."""
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding(len(shape)) if sharding else None)
            for k, (shape, dtype) in MicroBatches.spec(self.micro_batch_size, self.prompt_len,
                                                       self.new_tokens).items()}


def build(config, plan, graphdef, mesh, learner_shardings, sampler_shardings, eos_ids=(0,),
          pad_id: int = 0) -> Programs:
  """Every program of a run of `config` with batch plan `plan` (`config.validate`). Nothing is compiled here: each
  jitted function compiles on its first call, or is lowered by the fit check."""
  opt = optimizer(config, plan)
  return Programs(optimizer=opt, learner=learner(config, plan, graphdef, opt, mesh, learner_shardings),
                  sampler=train_sampler(config, graphdef, eos_ids, pad_id),
                  eval_sampler=make_sampler(graphdef, eval_sampling_config(config, eos_ids, pad_id)),
                  cast=sampler_cast(config, sampler_shardings, learner_shardings),
                  micro_batch_size=plan.micro_batch_size, prompt_len=int(config.data.max_prompt_tokens),
                  new_tokens=int(config.sampling.max_new_tokens))
