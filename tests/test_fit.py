"""The ahead-of-time fit check: TPU slices described by libtpu on this CPU, per-chip memory against FSDP size."""

import dataclasses
import os
import subprocess
import sys

import pytest

from configs_for_tests import qwen_config as _qwen_config
from dashjax.models.presets import PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024 ** 3


def _needs_libtpu():
  try:
    import libtpu  # noqa: F401
  except ImportError:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]'; Linux only)")


def test_reduced_qwen_fits_a_v5e_slice_and_fsdp_lowers_per_chip_memory():
  """Qwen2.5-0.5B's widths with 2 of its 24 layers, 512 new tokens, the config's memory settings: the learner's
  micro-step fits a v5e-8 slice, and per-chip memory falls as mesh.fsdp grows (the rest data-parallel)."""
  _needs_libtpu()
  from dashjax.train.fit import check

  arch = dataclasses.replace(PRESETS["Qwen/Qwen2.5-0.5B"], num_layers=2)
  reports = {}
  for fsdp in (1, 4):  # each is a TPU compilation of about a minute here
    c = _qwen_config(**{"sampling.max_new_tokens": 512, "mesh.fsdp": fsdp, "mesh.data": -1})
    reports[fsdp] = check(c, topology="v5e:2x4", programs_wanted=("micro_step",), model_cfg=arch)
  for fsdp, r in reports.items():
    assert r["chips"] == 8 and r["memory_per_chip_bytes"] == int(15.75 * GiB)
    assert r["mesh"] == {"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1}
    assert r["fits"], r["programs"]
  totals = {f: r["programs"]["micro_step"]["total_bytes"] for f, r in reports.items()}
  print({f: f"{t / GiB:.3f} GiB" for f, t in totals.items()})
  assert totals[1] > totals[4]
  # Stored parameters and Adam moments shard over fsdp (norms and biases stay whole: under 1% of the bytes).
  state = {f: r["state_per_chip_bytes"] for f, r in reports.items()}
  assert state[4]["params"] == pytest.approx(state[1]["params"] / 4, rel=0.01)
  assert state[4]["opt_state"] == pytest.approx(state[1]["opt_state"] / 4, rel=0.01)
  # The micro-step's temporaries hold activations of this chip's rows only: no growth with fsdp.
  temps = {f: r["programs"]["micro_step"]["temp_bytes"] for f, r in reports.items()}
  assert temps[4] <= temps[1] * 1.1


def test_a_program_that_does_not_fit_is_reported_with_its_figure():
  """32 rows per chip of 2304 tokens with plain attention, no remat and whole logits need far more than a v5e chip:
  the report carries the compiler's figure (and the text says DOES NOT FIT) instead of raising."""
  _needs_libtpu()
  from dashjax.train.fit import check, format_report

  arch = dataclasses.replace(PRESETS["Qwen/Qwen2.5-0.5B"], num_layers=1)
  c = _qwen_config(**{"train.micro_batch_size": 256, "train.remat": "none", "train.logprob_chunk": 0,
                      "train.attention": "plain", "train.scan_layers": False})
  r = check(c, topology="v5e:2x4", programs_wanted=("micro_step",), model_cfg=arch)
  p = r["programs"]["micro_step"]
  assert not r["fits"] and not p["fits"]
  assert "RESOURCE_EXHAUSTED" in p["error"]
  assert p["temp_bytes"] > 16 * GiB and p["argument_bytes"] > 0 and p["total_bytes"] > p["temp_bytes"], p
  text = format_report(r)
  assert "DOES NOT FIT" in text and "exceeds available HBM" in text


def test_cli_reports_local_devices_as_json(tmp_path):
  out = tmp_path / "fit.json"
  proc = subprocess.run([sys.executable, "-m", "dashjax.cli.fit", "--config", os.path.join(REPO, "configs/tiny.py"),
                         "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  import json

  r = json.loads(out.read_text())
  assert r["fits"] and r["chips"] >= 1 and r["topology"] == "local:cpu"
  # tiny evaluates nothing and stores float32; its sampler is the continuous one (16 rows, buckets 16, 8, 4): every
  # program a call runs is compiled and reported, in the order it runs.
  assert list(r["programs"]) == ["sampler/start", "sampler/chunk[16]", "sampler/compact[8]", "sampler/chunk[8]",
                                 "sampler/compact[4]", "sampler/chunk[4]", "micro_step", "apply"]
  for p in r["programs"].values():  # XLA:CPU counts flops and bytes but predicts no seconds
    assert p["flops"] is not None and p["bytes_accessed"] > 0 and p["predicted_s"] is None
  d = r["decode"]
  assert d["batch"] == 16 and d["context"] == 48 + 12 and d["floor_s"] is None and d["predicted_over_floor"] is None
  for p in r["programs"].values():
    assert p["total_bytes"] == p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"] + \
        p["resident_bytes"]
  # The micro-step donates its gradient accumulator: its output buffer is the input's.
  assert r["programs"]["micro_step"]["alias_bytes"] == r["state_per_chip_bytes"]["params"]
  assert "micro_step" in proc.stdout and "FITS" in proc.stdout


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
  proc = subprocess.run([sys.executable, "-m", "dashjax.cli.fit", "--config", os.path.join(REPO, "configs/tiny.py"),
                         "--topology", "v5e:9x9"], capture_output=True, text=True, timeout=300, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("dashjax-fit: error:")]
  assert len(errors) == 1 and "v5e:9x9" in errors[0] and "Traceback" not in proc.stderr
  # Without libtpu, --topology says what to install.
  from dashjax.train import fit

  monkeypatch.setitem(sys.modules, "libtpu", None)
  with pytest.raises(fit.FitError, match=r"pip install -e '\.\[tpu\]'"):
    fit.topology_devices("v5e:2x4")
