"""Every module ships in a regular (non-editable) install: each folder of dashjax/ with code is a package."""

import os

from setuptools import find_packages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_code_folder_is_a_package():
  packages = set(find_packages(ROOT, include=["dashjax", "dashjax.*"]))
  for folder, _, files in os.walk(os.path.join(ROOT, "dashjax")):
    if "__pycache__" in folder or not any(f.endswith(".py") for f in files):
      continue
    name = os.path.relpath(folder, ROOT).replace(os.sep, ".")
    assert name in packages, f"{name} has modules but no __init__.py: `pip install .` would leave it out"


def _requirements_on(platform: str, extra: str) -> list[str]:
  """The installed dashjax's requirements whose markers hold on `platform` with `extra` asked for."""
  from importlib.metadata import requires

  from packaging.requirements import Requirement

  out = []
  for line in requires("dashjax") or []:
    req = Requirement(line)
    env = {"sys_platform": platform, "platform_system": {"darwin": "Darwin", "win32": "Windows"}.get(platform, "Linux"),
           "extra": extra}
    if req.marker is None or req.marker.evaluate(env):
      out.append(str(req))
  return out


def test_extras_install_off_linux_without_libtpu():
  for extra in ("", "test", "tpu"):
    linux = _requirements_on("linux", extra)
    for platform in ("darwin", "win32"):
      reqs = _requirements_on(platform, extra)
      assert not [r for r in reqs if "libtpu" in r or ("jax" in r and "tpu" in r)], (platform, extra, reqs)
      assert set(reqs) <= set(linux)
  assert any(r.startswith("jax[tpu]") for r in _requirements_on("linux", "test"))  # Linux keeps the fit check
  assert any(r.startswith("pytest") for r in _requirements_on("darwin", "test"))
