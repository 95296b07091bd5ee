"""The unbiased pass@k estimator against brute-force enumeration of k-subsets."""

import itertools

import pytest

from dashjax.train.evaluate import pass_at_k


@pytest.mark.parametrize("n,c", [(4, 0), (4, 1), (4, 3), (8, 2), (8, 8), (6, 5)])
def test_pass_at_k_equals_enumeration(n, c):
  samples = [1] * c + [0] * (n - c)
  for k in range(1, n + 1):
    subsets = list(itertools.combinations(samples, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
  assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
