"""Multi-host training for real: 2 JAX processes on 127.0.0.1 (CPU, Gloo collectives) reproduce 1 process.

Run A is one process with 2 CPU devices; run B is `launch/local_processes.sh 2 ...`, two processes of one
`jax.distributed` job with 1 CPU device each. Both lay the same (data=2, fsdp=1, tensor=1) mesh over 2 devices and
run 2 `dash` steps of configs/tiny.py through the `dashjax-train` command line, so B exercises
`initialize_from_env`, host-built batches placed with `make_array_from_callback`, cross-process gathers of sampler
outputs, process-0-only metrics and a cooperative Orbax checkpoint. The per-device programs are the same in both
runs and a 2-way Gloo all-reduce adds the same two numbers as the in-process one, so metrics and the final training
state must agree to float rounding.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from dashjax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_processes.sh")
STEPS = 2
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT_S = 300  # per run; a hung collective fails the test instead of blocking CI


def _gloo_missing() -> str | None:
  """Why Gloo CPU collectives cannot run here, or None (also None when this jaxlib cannot be asked)."""
  try:
    from jax._src.lib import _jax as xla_ext
  except ImportError:
    try:
      from jax._src.lib import xla_extension as xla_ext  # older jaxlib
    except ImportError:
      return None
  if not hasattr(xla_ext, "make_gloo_tcp_collectives"):
    return "this jaxlib has no Gloo CPU collectives (make_gloo_tcp_collectives); cross-process CPU runs need them"
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices_per_process: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("DASHJAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
  return env


def _run(cmd: list[str], env: dict, what: str) -> str:
  """Runs cmd in its own process group; on timeout the whole group (launcher and every copy) is killed."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f"{what} did not finish in {TIMEOUT_S}s (hung collective?); output tail:\n{out[-4000:]}")
  assert proc.returncode == 0, f"{what} exited with {proc.returncode}; output tail:\n{out[-4000:]}"
  return out


def _train_args(workdir) -> list[str]:
  return [sys.executable, "-m", "dashjax.cli.train", f"--config={ROOT}/configs/tiny.py", f"--workdir={workdir}",
          f"--config.train.num_steps={STEPS}", "--config.mesh.data=2", "--config.mesh.fsdp=1",
          "--config.mesh.tensor=1", "--progress=false"]


def _restore(workdir) -> tuple[dict, dict]:
  """(flat {path: numpy array} of the saved {"params", "opt_state"}, the JSON meta) at the last step."""
  import jax
  import orbax.checkpoint as ocp

  step_dir = os.path.join(workdir, "checkpoints", str(STEPS))
  assert os.path.isdir(step_dir), f"no checkpoint for step {STEPS} in {workdir}: {os.listdir(workdir)}"
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    meta = manager.restore(STEPS, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    manager.close()
  ckpt = ocp.PyTreeCheckpointer()
  path = os.path.join(step_dir, "state")
  tree = ckpt.metadata(path).item_metadata.tree
  # Read every array whole as numpy: no devices, so the 2-device layout of either run does not matter here.
  state = ckpt.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
  return _flat(state), meta


def _flat(tree) -> dict:
  """{"params/layers/0/attn/q/kernel": array, ...}: nnx's trailing "value" dropped, list indices as strings."""
  import jax

  def name(path):
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")

  return {name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _initial_params() -> dict:
  """The parameters both runs start from (model.source of configs/tiny.py, the trainer's loader)."""
  from flax import nnx

  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import tiny

  from dashjax.models.loading import load_model

  c = tiny.get_config()
  model, _ = load_model(c.model.source, dtype=c.model.dtype)
  return _flat({"params": nnx.to_pure_dict(nnx.split(model)[1])})


def _is_timing(key: str) -> bool:
  return key.endswith("_s")  # sample_s, reward_s, update_s, step_s, tokens_per_s


def _worst(a: dict, b: dict, keys) -> tuple[float, str]:
  diffs = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0)) for k in keys}
  k = max(diffs, key=diffs.get)
  return diffs[k], k


@pytest.mark.skipif(shutil.which("bash") is None, reason="launch/local_processes.sh needs bash")
def test_two_processes_match_one_process_with_two_devices(tmp_path):
  missing = _gloo_missing()
  if missing:
    pytest.skip(missing)
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  _run(_train_args(one), _env(2), "1 process x 2 devices")
  env = _env(1)
  env["DASHJAX_PORT"] = str(_free_port())
  # mesh.data=2 on 1 device per process passes validate() only if the two processes really form one job.
  _run(["bash", LAUNCHER, "2", *_train_args(two)], env, "2 processes x 1 device (local_processes.sh)")

  # Metrics: process 0 alone writes them (one line per step, no duplicates from process 1).
  ma, mb = read_metrics(str(one / "metrics.jsonl")), read_metrics(str(two / "metrics.jsonl"))
  assert [r["step"] for r in ma] == [r["step"] for r in mb] == list(range(1, STEPS + 1)), (ma, mb)
  for ra, rb in zip(ma, mb):
    assert ra["optimizer_updates"] == 1 and ra["grad_norm"] > 0, ra  # real updates, not skipped ones
    assert sorted(ra) == sorted(rb), (sorted(ra), sorted(rb))
    for k in sorted(ra):
      va, vb = ra[k], rb[k]
      if _is_timing(k):
        continue
      if isinstance(va, (int, float)) and not isinstance(va, bool) and isinstance(vb, (int, float)):
        assert np.isclose(va, vb, rtol=RTOL, atol=ATOL), (
            f"step {ra['step']} {k}: 1 process {va!r} vs 2 processes {vb!r} (abs diff {abs(va - vb):.3g})")
      else:
        assert va == vb, f"step {ra['step']} {k}: 1 process {va!r} vs 2 processes {vb!r}"

  # Final training state: every parameter and optimizer moment, and the data position / step in the meta.
  sa, meta_a = _restore(one)
  sb, meta_b = _restore(two)
  assert meta_a == meta_b and meta_a["step"] == STEPS, (meta_a, meta_b)
  assert sorted(sa) == sorted(sb), "the two checkpoints hold different trees"
  for k in sa:
    assert sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype, (k, sa[k].shape, sb[k].shape)
  params = [k for k in sa if k.startswith("params/")]
  moments = [k for k in sa if not k.startswith("params/")]
  assert params and moments, sorted(sa)
  for keys, what in ((params, "parameter"), (moments, "optimizer state")):
    diff, where = _worst(sa, sb, keys)
    bad = [k for k in keys if not np.allclose(sa[k], sb[k], rtol=RTOL, atol=ATOL)]
    assert not bad, (f"{what}s differ between 1 process and 2 processes in {len(bad)} arrays ({bad[:5]}); "
                     f"max abs difference {diff:.3g} in {where}")
    print(f"max abs difference of {what}s: {diff:.3g} ({where})")

  # Not vacuous: the two updates moved the parameters away from the shared initialization.
  init = _initial_params()
  assert sorted(init) == sorted(params), (sorted(set(init) ^ set(params))[:5])
  moved, where = _worst(sa, init, params)
  unchanged = [k for k in params if np.array_equal(sa[k], init[k])]
  assert moved > 1e-4 and not unchanged, f"training left parameters unchanged: {unchanged[:5]} (max move {moved:.3g})"
  print(f"largest parameter change from initialization: {moved:.3g} ({where})")
