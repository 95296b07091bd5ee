"""Start-up on a machine without a TPU: libtpu (installed for the fit check) stays quiet, and a real TPU is never
hidden; the storage clients follow STORAGE_EMULATOR_HOST."""

import importlib.util
import os
import subprocess
import sys

import pytest

from dashjax import platform

LIBTPU_NOISE = ("unexpected worker hostname", "Source Location Trace", "Failed to find host bounds",
                "could not determine TPU")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (Linux only)")
@pytest.mark.skipif(platform.tpu_may_be_present(), reason="this machine may have a TPU")
def test_libtpu_prints_nothing_without_a_tpu():
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "JAX_PLATFORMS"))}
  code = "import dashjax, jax; print(jax.devices()[0].platform)"
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "cpu"
  assert not [n for n in LIBTPU_NOISE if n in proc.stderr], proc.stderr[-2000:]


def test_tpu_settings_only_where_no_tpu_can_be(monkeypatch):
  monkeypatch.setattr(platform, "tpu_may_be_present", lambda: True)
  env = {}
  platform.configure(env)
  assert not [k for k in env if k.startswith("TPU_")]  # a TPU VM's own discovery is never overridden
  monkeypatch.setattr(platform, "tpu_may_be_present", lambda: False)
  env = {"TPU_WORKER_HOSTNAMES": "host-a,host-b"}
  platform.configure(env)
  assert env["TPU_WORKER_HOSTNAMES"] == "host-a,host-b" and env["TPU_HOST_BOUNDS"] == "1,1,1"


def test_emulator_host_reaches_every_storage_client():
  env = {"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"}
  platform.configure(env)
  assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:4443"
  env = {}
  platform.configure(env)
  assert "TENSORSTORE_GCS_HTTP_URL" not in env and "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in env


def test_orbax_wait_note_is_not_shown(caplog):
  """Each save already waits for itself, so Orbax's "waiting for previous save" warning only reports that wait."""
  from absl import logging as absl_logging

  import dashjax.train.checkpoint  # noqa: F401  -- installs the filter

  absl_logging.warning("Waiting for previous save to complete took %f seconds. If this number is high", 5.4)
  absl_logging.warning("a warning that stays visible")
  shown = [r.getMessage() for r in caplog.records]
  assert not [m for m in shown if "Waiting for previous save" in m] and "a warning that stays visible" in shown
