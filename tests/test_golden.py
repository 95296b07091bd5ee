"""Behaviour did not change: 3 training steps of every algorithm on configs/tiny.py give the numbers recorded in
tests/golden/tiny_3_steps.json (by tests/golden/record.py, before the algorithm/update refactor).

Discrete outcomes (rewards, kept rows, micro-steps, sampler calls, lengths) must be equal. Losses, KL, clip
fractions, gradient norms and how far the parameters moved must agree to rtol 1e-5 (+ 1e-6 absolute for values
that are 0 up to cancellation): the compiled programs and their inputs are meant to be the same, and on one machine
two recordings agree bit for bit; the tolerance absorbs only a reordering of host-side float32 arithmetic (one ulp
is 6e-8 relative) carried through three AdamW steps, or another CPU's rounding. A changed advantage, weight,
normalization or row set moves these numbers by 1e-3 relative or more.
"""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))

from record import CASES, GOLDEN, run_case  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
TOLERANT = ("pg_loss", "kl", "clip_frac", "grad_norm", "nll", "params_moved")

with open(GOLDEN) as f:
  RECORDED = json.load(f)["cases"]


def _differences(want: list[dict], got: list[dict]) -> list[str]:
  out = []
  for step, (w, g) in enumerate(zip(want, got), 1):
    if set(w) != set(g):
      out.append(f"step {step}: keys {sorted(set(w) ^ set(g))} differ")
    for k in sorted(set(w) & set(g)):
      a, b = w[k], g[k]
      if k in TOLERANT and isinstance(a, float) and isinstance(b, float):
        same = math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(a) and math.isnan(b))
      else:
        same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
      if not same:
        out.append(f"step {step}: {k} recorded {a!r}, now {b!r}")
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_three_steps_match_the_recording(name, tmp_path):
  want = RECORDED[name]
  got = run_case(name, str(tmp_path))
  assert len(got) == len(want)
  problems = _differences(want, got)
  assert not problems, f"{name}:\n" + "\n".join(problems)
