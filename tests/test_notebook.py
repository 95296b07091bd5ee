"""notebooks/dashjax_colab.ipynb, top to bottom in a real Jupyter kernel (nbclient + ipykernel), in smoke mode.

What `DASHJAX_NOTEBOOK_SMOKE=1 jupyter execute notebooks/dashjax_colab.ipynb` does, with the kernel started in an
empty folder outside the repository (paths must resolve against the repository, not the working directory), and
the kernel spec pointed at this interpreter (a fresh CI venv's `python3` kernel may be another Python). Checks the
outputs a user would look at: the steps ran, the plots are images, the trained policy printed text. A cell appended
to the notebook then checks the notebook's GPU/TPU batch-size table with `validate` on 1, 2, 4 and 8 devices.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import time

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "dashjax_colab.ipynb")
SMOKE_STEPS = 2  # configs/tiny.py cut to 2 steps in smoke mode

# Appended to the notebook and run in the same kernel: the kernel's interpreter, and every runtime's batch sizes
# passing `validate` for both algorithms on the device counts Colab offers (1 GPU, 1 TPU chip, a v2-8's 8 cores) and
# those between.
SIZES_CHECK = """
print("kernel python:", sys.executable)
checked = 0
for runtime in SIZES:
    for devices in (1, 2, 4, 8):
        for algo in ("dash", "grpo"):
            c = sized_for_runtime(load_config(os.path.join(REPO_DIR, "configs", "smollm2_arith.py")), runtime, devices)
            c.rl.algo = algo
            validate(c, num_devices=devices, check_model_source=False)
            checked += 1
print(f"sizes ok: {checked} runtime/device/algo combinations")
"""


def _text(cell, name="stdout") -> str:
  return "".join(o["text"] for o in cell["outputs"] if o["output_type"] == "stream" and o["name"] == name)


def _pngs(cell) -> list[bytes]:
  return [base64.b64decode(o["data"]["image/png"]) for o in cell["outputs"]
          if o["output_type"] in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> dict:
  """A `python3` kernel spec running this interpreter, found first on JUPYTER_PATH; the kernel's environment."""
  from ipykernel.kernelspec import install

  prefix = tmp_path / "jupyter-prefix"
  monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
  install(prefix=str(prefix), kernel_name="python3")  # argv: [sys.executable, -m, ipykernel_launcher, ...]
  env = dict(os.environ)
  env.update(DASHJAX_NOTEBOOK_SMOKE="1", DASHJAX_NOTEBOOK_RUNS=str(tmp_path / "runs"), JAX_PLATFORMS="cpu",
             IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
  env.pop("MPLBACKEND", None)  # the kernel's own inline backend draws the plots
  env.pop("DASHJAX_REPO", None)
  return env


def test_notebook_runs_top_to_bottom_in_a_kernel(kernel_env, tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert all(c["outputs"] == [] for c in nb.cells if c.cell_type == "code"), "the notebook is stored with outputs"
  nb.cells.append(nbformat.v4.new_code_cell(SIZES_CHECK, id="test-sizes-check"))
  cwd = tmp_path / "cwd"  # neither the repository nor notebooks/
  cwd.mkdir()
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120,
                                   resources={"metadata": {"path": str(cwd)}})
  t0 = time.perf_counter()
  try:
    client.execute(env=kernel_env)
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"a notebook cell failed:\n{e}", pytrace=False)
  seconds = time.perf_counter() - t0

  cells = {c["id"]: c for c in nb.cells}
  for c in nb.cells:
    if c.cell_type == "code":
      assert c["execution_count"] is not None, f"cell {c['id']} did not run"
      assert not [o for o in c["outputs"] if o["output_type"] == "error"], f"cell {c['id']} errored"

  assert "nothing to install" in _text(cells["setup-install"])
  assert re.search(r"from \S+ \| jax .* runtime: cpu", _text(cells["setup-runtime"])), _text(cells["setup-runtime"])
  repo = _text(cells["setup-runtime"]).split(" from ", 1)[1].split(" | ")[0]
  assert os.path.realpath(repo) == os.path.realpath(ROOT), repo  # configs/ found in the repository, not the cwd
  assert "-> FITS" in _text(cells["config"])

  train = _text(cells["train"])
  assert re.search(rf"^trained {SMOKE_STEPS} steps of dash in \d+ s", train, re.M), train
  assert "held-out accuracy after training" in train
  runs = tmp_path / "runs" / "colab_dash"
  with open(runs / "metrics.jsonl") as f:
    assert len([line for line in f if line.strip()]) == SMOKE_STEPS

  plot = cells["plot"]
  assert [p[:8] for p in _pngs(plot)] == [b"\x89PNG\r\n\x1a\n"], "no inline plot of reward and accuracy"
  assert re.search(rf"held-out accuracy at step {SMOKE_STEPS}: \d\.\d{{3}} \+/- ", _text(plot)), _text(plot)
  assert len(re.findall(r"^ +\d+ +-?\d\.\d{3} ", _text(plot), re.M)) == SMOKE_STEPS  # one table row per step

  generated = _text(cells["generate-trained"])
  assert f"the policy after {SMOKE_STEPS} steps" in generated
  assert len(re.findall(r"^ +-> (['\"]).*\1   \(gold: ", generated, re.M)) == 4, generated

  assert len(_pngs(cells["timing"])) == 1, "no inline timing plot"
  assert re.search(r"^grpo .*sampler calls \d+", _text(cells["timing"]), re.M)
  assert "model.safetensors" in _text(cells["export"]) and "reloaded: [" in _text(cells["export"])
  assert re.search(r"^sizes ok: 24 ", _text(cells["test-sizes-check"]), re.M)
  assert f"kernel python: {sys.executable}\n" in _text(cells["test-sizes-check"])  # the kernel runs pytest's Python
  print(f"notebook ran in {seconds:.0f} s")
