"""Checks notebooks/dashjax_colab.ipynb: valid nbformat-4 JSON with no stored outputs, and code that runs.

The code cells are joined into one script and executed on CPU, skipping the cells tagged `colab-setup` (clone, pip)
and `heavy` (SmolLM2 generation), with configs/tiny.py as the training config, 2 steps per run and a temporary
runs folder. The accelerator batch sizes of the notebook are checked with `validate` for 1, 2, 4 and 8 devices.

usage: python notebooks/check_colab_notebook.py [--structure-only] [--keep-script PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOK = os.path.join(HERE, "dashjax_colab.ipynb")
SKIP_TAGS = {"colab-setup", "heavy"}


def check_structure(nb: dict) -> None:
  try:
    import nbformat
  except ImportError:
    nbformat = None
  if nbformat is not None:
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
  assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5, "not nbformat 4.5"
  assert isinstance(nb["metadata"], dict) and nb["metadata"]["kernelspec"]["language"] == "python"
  ids = set()
  for i, cell in enumerate(nb["cells"]):
    assert set(cell) >= {"cell_type", "id", "metadata", "source"}, f"cell {i} lacks required keys"
    assert cell["id"] not in ids, f"cell {i}: duplicate id"
    ids.add(cell["id"])
    assert isinstance(cell["source"], (str, list)), f"cell {i}: bad source"
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {i} has stored outputs"
    else:
      assert cell["cell_type"] in ("markdown", "raw"), f"cell {i}: unknown type {cell['cell_type']}"
      assert "outputs" not in cell and "execution_count" not in cell, f"cell {i}: code-only keys"
  print(f"structure ok: {len(nb['cells'])} cells, nbformat {nb['nbformat']}.{nb['nbformat_minor']}, "
        f"nbformat package {'used' if nbformat else 'not installed (checked by hand)'}")


def script_from(nb: dict, runs: str) -> str:
  parts = []
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code" or SKIP_TAGS & set(cell["metadata"].get("tags", [])):
      continue
    src = "".join(cell["source"])
    for line in src.splitlines():
      assert not line.lstrip().startswith(("!", "%")), f"cell {i}: shell/magic line in a checked cell: {line}"
    parts.append(f"# --- cell {i}\n{src}\n")
  code = "\n".join(parts)
  substitutions = [
      ('CONFIG_FILE = "configs/smollm2_arith.py"', 'CONFIG_FILE = "configs/tiny.py"'),
      ("NUM_STEPS = 10", "NUM_STEPS = 2"),
      ("TIMING_STEPS = 3", "TIMING_STEPS = 2"),
      ('RUNS = "runs"', f"RUNS = {runs!r}"),
      ("from IPython.display import Image, display", "from notebook_check_display import Image, display"),
      # tiny.py turns evaluation off; turn it on to run the before/after report.
      ("config.train.num_steps = NUM_STEPS\n",
       "config.train.num_steps = NUM_STEPS\nconfig.eval.before = config.eval.after = True\n"),
  ]
  for old, new in substitutions:
    assert code.count(old) == 1, f"expected exactly one {old!r} in the notebook's code"
    code = code.replace(old, new)
  return code


def display_stub() -> None:
  """Stands in for IPython.display (not installed here; a fake IPython package would confuse treescope)."""

  class Image:
    def __init__(self, filename):
      with open(filename, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{filename} is not a PNG"
      self.filename = filename

    def __repr__(self):
      return f"<Image {self.filename} ({os.path.getsize(self.filename)} bytes)>"

  mod = types.ModuleType("notebook_check_display")
  mod.Image = Image
  mod.display = lambda *objs: print(*objs)
  sys.modules[mod.__name__] = mod


def check_accelerator_sizes(ns: dict) -> None:
  """The notebook's GPU/TPU batch sizes pass validate() on 1, 2, 4 and 8 devices, for both algorithms."""
  from dashjax.config import validate

  ns["ACCELERATOR"] = True
  for algo in ("dash", "grpo"):
    for n in (1, 2, 4, 8):
      ns["jax"].device_count = lambda n=n: n  # what sized_for_runtime reads
      c = ns["sized_for_runtime"](ns["load_config"](os.path.join(ROOT, "configs", "smollm2_arith.py")))
      c.rl.algo = algo
      plan = validate(c, num_devices=n)
      assert c.eval.batch_size // c.eval.samples % (plan.mesh_shape[0] * plan.mesh_shape[1]) == 0
  print("accelerator sizes ok: validate() passes on 1, 2, 4, 8 devices for dash and grpo")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--structure-only", action="store_true")
  parser.add_argument("--keep-script", default="", help="also write the executed script here")
  args = parser.parse_args()
  with open(NOTEBOOK) as f:
    nb = json.load(f)
  check_structure(nb)
  if args.structure_only:
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("MPLBACKEND", "Agg")
  display_stub()
  with tempfile.TemporaryDirectory(prefix="dashjax-nb-") as runs:
    code = script_from(nb, runs)
    if args.keep_script:
      with open(args.keep_script, "w") as f:
        f.write(code)
    os.chdir(ROOT)
    ns = {"__name__": "__main__"}
    exec(compile(code, "dashjax_colab_cells.py", "exec"), ns)
    assert ns["summary"]["after"]["num_prompts"] > 0 and os.path.exists(ns["summary"]["curve"])
    assert set(ns["timing"]) == {"grpo", "dash"}
    assert os.path.exists(os.path.join(ns["export_dir"], "model.safetensors"))
    import jax

    real_device_count = jax.device_count
    try:
      check_accelerator_sizes(ns)
    finally:
      jax.device_count = real_device_count
  print("notebook code ok")


if __name__ == "__main__":
  main()
