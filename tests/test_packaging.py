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
