"""The compiler's cost model per program and the decode floor: numbers checked against what they must be."""

import dataclasses
import types

import pytest

from dashjax.parallel.cost import CHIPS, CostError, chip_for, decode_floor, kv_bytes_per_token


def _needs_libtpu():
  try:
    import libtpu  # noqa: F401
  except ImportError:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]'; Linux only)")


def test_one_matmul_reads_its_weight_once_at_v5e_bandwidth():
  """[64, 896] x [896, 151936] bfloat16 on one v5e chip: the compiler's bytes are the operands and the result
  (within 10%), its flops 2*M*K*N, and its predicted time the bytes over 819 GB/s (within 30%)."""
  _needs_libtpu()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from dashjax.parallel.cost import program_cost
  from dashjax.train.fit import topology_devices

  devices = topology_devices("v5e:2x2")
  sh = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())
  a = jax.ShapeDtypeStruct((64, 896), jnp.bfloat16, sharding=sh)
  w = jax.ShapeDtypeStruct((896, 151936), jnp.bfloat16, sharding=sh)
  cost = program_cost(jax.jit(lambda a, w: a @ w).lower(a, w).compile(), CHIPS["v5e"])
  operands = (64 * 896 + 896 * 151936 + 64 * 151936) * 2
  assert cost["bytes_accessed"] == pytest.approx(operands, rel=0.1)
  assert cost["flops"] == pytest.approx(2 * 64 * 896 * 151936, rel=0.01)
  chip = chip_for(devices[0].device_kind)
  assert chip.name == "v5e"
  assert cost["predicted_s"] == pytest.approx(operands / chip.bandwidth, rel=0.3)


def test_a_weight_prefetched_on_chip_is_counted_several_times():
  """The premise of `fit_reference`: on one v5e chip, a [32, 896] x [896, 4864] bfloat16 matmul (a layer's MLP
  matrix, small enough to prefetch into on-chip memory) is counted at several times its bytes, while a matrix too
  large to stage ([896, 151936], the LM head) is counted once. If libtpu's cost model stops doing this, the decode
  floor can be compared with the compiler's prediction directly."""
  _needs_libtpu()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from dashjax.train.fit import topology_devices

  sh = NamedSharding(Mesh(np.array(topology_devices("v5e:2x2")[:1]), ("x",)), PartitionSpec())
  counted = {}
  for n in (4864, 151936):
    a = jax.ShapeDtypeStruct((32, 896), jnp.bfloat16, sharding=sh)
    w = jax.ShapeDtypeStruct((896, n), jnp.bfloat16, sharding=sh)
    c = jax.jit(lambda a, w: a @ w).lower(a, w).compile()
    counted[n] = c.cost_analysis()["bytes accessed"] / (896 * n * 2)
  assert counted[4864] > 3.0 and counted[151936] < 1.2, counted


def test_decode_floor_arithmetic():
  """0.5B-like: 1e9 weight bytes, 32 rows of 8 prompts at 1024 keys (256 of prompt), 12288 KV bytes per token."""
  cfg = types.SimpleNamespace(num_layers=24, num_kv_heads=2, head_dim=64)
  per_token = kv_bytes_per_token(cfg, 2)
  assert per_token == 24 * 2 * 2 * 64 * 2 == 12288
  f = decode_floor(CHIPS["v5e"], weight_bytes=1e9, rows=32, prompts=8, prompt_len=256, context=1024,
                   kv_token_bytes=per_token, flops=1e11)
  kv = (8 * 256 + 32 * 768) * 12288
  assert f["kv_bytes"] == kv
  assert f["memory_s"] == pytest.approx((1e9 + kv) / 819e9)
  assert f["compute_s"] == pytest.approx(1e11 / 197e12)
  assert f["floor_s"] == f["memory_s"]
  # Compute-bound: the FLOPs over peak win.
  g = decode_floor(CHIPS["v5e"], weight_bytes=1e6, rows=1, prompts=1, prompt_len=1, context=1, kv_token_bytes=1,
                   flops=1e12)
  assert g["floor_s"] == g["compute_s"] == pytest.approx(1e12 / 197e12)


def test_chip_kinds_and_an_unknown_one():
  assert chip_for("TPU v5 lite").name == "v5e" and chip_for("TPU v5").name == "v5p"
  assert chip_for("TPU v6 lite").name == "v6e" and chip_for("TPU v4").name == "v4"
  with pytest.raises(CostError) as e:
    chip_for("TPU v99")
  msg = str(e.value)
  assert "\n" not in msg and "TPU v99" in msg and all(k in msg for k in ("v5e", "v6e", "v4", "v5p"))


def test_unknown_chip_kind_is_a_fit_error(monkeypatch):
  """A topology whose chip has no bandwidth entry stops the fit check with one line, before compiling."""
  from dashjax.train import fit

  fake = types.SimpleNamespace(platform="tpu", device_kind="TPU v99", id=0)
  monkeypatch.setattr(fit, "make_mesh", lambda shape, devices: None)
  monkeypatch.setattr(fit, "chip_memory", lambda d: 16 << 30)
  import sys

  sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__file__)))
  from configs import tiny

  with pytest.raises(fit.FitError, match="known kinds"):
    fit.check(tiny.get_config(), [fake], programs_wanted=("nothing",))


def test_continuous_sampler_on_a_slice_is_listed_split_by_rows_and_costed():
  """tiny on v5e:2x2 with FSDP over the 4 chips: every program of a continuous call is compiled and costed, the
  start program hands each chip its rows' KV only (not the whole cache), and a decode step is set against its floor."""
  _needs_libtpu()
  import os
  import sys

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import tiny
  from dashjax.models.presets import PRESETS
  from dashjax.train.fit import check

  c = tiny.get_config()
  c.mesh.data, c.mesh.fsdp = 1, -1
  c.sampling.max_new_tokens = 256  # the decode cache outweighs the call's other buffers
  r = check(c, topology="v5e:2x2", programs_wanted=("sampler",))
  assert list(r["programs"]) == ["sampler/start", "sampler/chunk[16]", "sampler/compact[8]", "sampler/chunk[8]",
                                 "sampler/compact[4]", "sampler/chunk[4]"]
  cfg = PRESETS["tiny-random"]
  whole_cache = cfg.num_layers * 2 * 16 * cfg.num_kv_heads * 256 * cfg.head_dim * 4  # 16 rows x 256 tokens, f32
  start = r["programs"]["sampler/start"]
  # Outputs: the prompts' KV and the call's buffers (small) plus this chip's 4 of the 16 rows of the decode cache.
  assert start["output_bytes"] < whole_cache / 2, start
  for p in r["programs"].values():
    assert p["flops"] > 0 and p["bytes_accessed"] > 0 and p["predicted_s"] > 0
  d = r["decode"]
  assert d["batch"] == 16 and d["rows_per_chip"] == 4 and d["context"] == 48 + 256 and d["chip"] == "v5e"
  assert d["floor_s"] > 0 and d["predicted_over_floor"] == pytest.approx(d["predicted_s"] / d["floor_s"])
  # The floor's bytes as a program, costed by the same model: the decode step against it.
  ref = d["reference"]
  assert not ref["error"] and ref["predicted_s"] > 0
  assert d["predicted_over_reference"] == pytest.approx(d["predicted_s"] / ref["predicted_s"])
  print(f"decode/floor {d['predicted_over_floor']:.2f}, reference/floor {d['reference_over_floor']:.2f}, "
        f"decode/reference {d['predicted_over_reference']:.2f}")


def test_floor_reference_reads_what_the_floor_counts():
  """The decode floor written as a program (`fit_reference`), compiled for the local CPU in float32 (XLA:CPU copies
  bfloat16 operands to float32 for its matmuls): XLA:CPU counts each operand once, with no on-chip staging, so its
  bytes must be the floor's (the weights once, the prompt's keys and values once per prompt, the generated ones once
  per row) plus the rows' activations (15% here). Reading the prompt's cache once per row, or the weights twice,
would add over 50%."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dashjax.models import ModelConfig, Transformer
  from dashjax.parallel.mesh import SAMPLER_RULES, make_mesh, param_shardings
  from dashjax.train.fit import ProgramFit, _compile, per_chip_bytes
  from dashjax.train.fit_reference import reference_job

  cfg = ModelConfig("qwen2", 1024, 512, 1024, 2, 8, 4, 64, tie_word_embeddings=True)
  _, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=s), state,
                        param_shardings(state, mesh, SAMPLER_RULES))
  rows, samples, prompt_len, context = 16, 4, 192, 256
  fit = reference_job(params, cfg, mesh, rows, samples, prompt_len, context, _compile)
  assert isinstance(fit, ProgramFit) and not fit.error
  kv = (rows // samples * prompt_len + rows * (context - prompt_len)) * kv_bytes_per_token(cfg, 4)
  floor_bytes = per_chip_bytes(params) + kv
  print(f"reference {fit.bytes_accessed / 1e6:.2f} MB, floor {floor_bytes / 1e6:.2f} MB (KV {kv / 1e6:.2f})")
  assert floor_bytes <= fit.bytes_accessed <= 1.2 * floor_bytes
