"""Answer normalization and equivalence for math answers, and the binary math reward.

`answers_match(pred, gold)` decides in three steps, cheapest first:

1. the normalized strings are equal (Hendrycks-MATH-style normalization, see `normalize_answer`);
2. both are plain numbers (integers, decimals, `a/b`, `\\frac{a}{b}`, `1,234`): equal within 1e-6 relative
   (whole numbers exactly), and that decides it: two different numbers never reach sympy, which keeps wrong
   numeric answers (most samples early in training) at microseconds instead of ~5 ms;
3. otherwise `math_verify.verify(parse(gold), parse(pred))` (symbolic equality: `\\sqrt{8}` = `2\\sqrt{2}`,
   `\\frac{1}{2}` = `0.5`, sets, intervals, equations). Both sides are wrapped in `$...$` first: math_verify's
   LaTeX extractor only looks inside math delimiters or `\\boxed{}`, so a bare `\\sqrt{2}` or `x+1` parses to
   nothing, while bare numbers happen to work through its plain-expression extractor. Before verify, plain
   expressions are compared by value at a fixed point: clearly different -> False, equal constants -> True,
   without simplify.

Size guard, before parsing: `\\gcd`, `\\lcm`, `\\binom`, `\\choose`, `\\Gamma` are evaluated by the parser itself,
so an answer using them together with `^`, `!` or a 5-digit number is not parsed at all (`\\gcd(10^{10^{10}}, 3)`
computes the power in C). After parsing, before any numeric evaluation or verify, both sides must pass `_bounded`,
a cheap log-scale bound on the numbers that evaluating them could build: at most MAX_DIGITS digits (2^65536
passes; 9^(9^9), 10^(10^10), (10^100)!, binomial(10^9, 10^8), e^(10^10) do not), and sums or products over at most
10^MAX_TERMS_LOG10 terms. Refused answers are "not shown equal" (step 1 can still match them): sympy would spend
minutes on them, partly in C where no alarm stops it (`\\boxed{9^{9^{9^{9}}}}` against 1 ran past 60 s).

math_verify guards its own sympy calls with `signal.alarm` (whole seconds, main thread only). We keep that as an
inner timeout where it is allowed, and pass None elsewhere: off the main thread it would raise, and under an outer
timer (RewardPool's in-process `Deadline`) its `alarm(0)` would cancel that timer. The numeric probe gets a
`Deadline` of the same length. The hard timeout is `RewardPool`'s, which kills a worker stuck inside C code.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import signal
import threading
from fractions import Fraction

from dashjax.rewards.bounds import Deadline, ScoreTimeout
from dashjax.rewards.extract import extract_answer, last_boxed

MV_TIMEOUT_S = 2  # math_verify's per-call alarm (int seconds); keep it under RewardPool's timeout
MAX_SYMBOLIC_CHARS = 500  # longer answers are compared as strings only
MAX_DIGITS = 10**5  # size guard: the largest number (in decimal digits) an answer may make sympy build
MAX_TERMS_LOG10 = 4  # size guard: finite sums and products over more terms are refused

_TEXT_CMDS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[!,;: ]|\\(?:left|right|big|Big|bigg|Bigg|displaystyle)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")  # unambiguous: no backtracking
_FRACTION = re.compile(r"[+-]?\d+/[+-]?\d+")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "5 apples", "18 \text{ dollars}" (after unwrapping), "12 cm^2": a numeric head, then words.
_TRAILING_UNITS = re.compile(r"(.*?\d\}?)\s+[A-Za-z]{2,}[A-Za-z\s.]*(?:\^\{?\d\}?)?")


def _clean(s: str) -> str:
  """Normalization that keeps the string valid LaTeX (spaces kept), used before math_verify."""
  s = str(s).strip().replace("\u2212", "-")
  if "\\boxed" in s or "\\fbox" in s:
    s = last_boxed(s) or s
  s = s.removeprefix("####").strip()
  s = s.replace("\\$", "").replace("$", "")
  for delim in ("\\(", "\\)", "\\[", "\\]"):
    s = s.replace(delim, "")
  s = _SPACING.sub("", s)
  s = _DEGREES.sub("", s)
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  for _ in range(3):  # nested: \text{\textbf{5}}
    s = _TEXT_CMDS.sub(r"\1", s)
  s = s.replace("{,}", ",").strip()
  m = _TRAILING_UNITS.fullmatch(s) if len(s) <= 100 else None  # the regex backtracks on long inputs
  if m and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", m.group(1))):
    s = m.group(1)
  # TeX shorthands: \frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}, \sqrt3 -> \sqrt{3}
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac(\d)(?=\{)", r"\\frac{\1}", s)
  s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)
  s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
  return s.strip().rstrip(".").strip()


def normalize_answer(s: str) -> str:
  """Canonical string for exact comparison: `_clean`, then no spaces, no thousands commas, no short `x=` prefix.

  Examples: "$1,234$" -> "1234"; "\\dfrac{1}{2}" -> "\\frac{1}{2}"; "x = 5" -> "5"; "18 \\text{ dollars}" -> "18";
  "\\left( 1, 2 \\right)" -> "(1,2)"; "(B)" -> "B"; "50\\%" -> "50"; ".5" -> "0.5"; "#### 72" -> "72".
  """
  s = re.sub(r"\s+", "", _clean(s))
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  lhs, eq, rhs = s.partition("=")
  if eq and 0 < len(lhs) <= 2 and lhs.isalpha() and rhs and "=" not in rhs:  # "x=5", "k=3" (Hendrycks' rule)
    s = rhs
  if s.startswith("."):
    s = "0" + s
  elif s.startswith("-."):
    s = "-0" + s[1:]
  m = re.fullmatch(r"\(([A-Za-z])\)", s)  # multiple choice "(B)" -> "B"
  return m.group(1) if m else s


def to_number(s: str) -> Fraction | None:
  """Exact value of a normalized plain number ("12", "-0.5", "1e-3", "3/4", "\\frac{-3}{4}"), else None."""
  try:
    if _PLAIN_NUMBER.fullmatch(s):
      return Fraction(s)
    if _FRACTION.fullmatch(s):
      return Fraction(s.replace("+", ""))
    m = _LATEX_FRACTION.fullmatch(s)
    if m:
      value = Fraction(int(m.group(2)), int(m.group(3)))
      return -value if m.group(1) == "-" else value
  except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
    return None
  return None


def numbers_close(a: Fraction, b: Fraction, rel: float = 1e-6) -> bool:
  """Equal within `rel` relative (1e-12 absolute near 0), except that two whole numbers must be equal exactly:
  a relative tolerance would accept -131073013 for -131073014. Exact arithmetic, so huge values cannot overflow."""
  if a.denominator == 1 and b.denominator == 1:
    return a == b
  return abs(a - b) <= max(Fraction(rel) * max(abs(a), abs(b)), Fraction(1, 10**12))


def _mv_timeout() -> int | None:
  # math_verify's alarm raises off the main thread, and would cancel a pending (outer) timer: see the docstring.
  if threading.current_thread() is not threading.main_thread() or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
    return None
  return MV_TIMEOUT_S


@functools.lru_cache(maxsize=8192)
def _mv_parse(latex: str, timeout: int | None) -> tuple:
  from math_verify import parse

  return tuple(parse(f"${latex}$", parsing_timeout=timeout))


# Evaluation point for `_compare_at_a_point`: distinct, non-special rationals (no 0, 1 or integers that could
# make different expressions coincide by accident).
_PROBE = (13, 7), (17, 11), (23, 19), (29, 5), (31, 17), (37, 13)


def _compare_at_a_point(gold, pred) -> bool | None:
  """Cheap numeric decision for two plain sympy expressions, or None to leave it to math_verify.

  False when, in the same variables, their values clearly differ (1e-4 relative) at one fixed point: then they
  cannot be equal, and math_verify's `simplify` (~30 ms, most of a wrong symbolic answer's cost) is skipped.
  True when both are constants equal to 1e-12 at 20 digits (`2\\sqrt{2}` vs `\\sqrt{8}`). Equations, sets,
  intervals, other variables, near misses and agreeing non-constants go to math_verify.
  """
  import sympy

  if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
    return None
  symbols = sorted(gold.free_symbols, key=str)
  if pred.free_symbols != set(symbols) or len(symbols) > len(_PROBE):
    return None
  point = {x: sympy.Rational(*q) for x, q in zip(symbols, _PROBE)}
  try:
    a, b = complex(gold.evalf(20, subs=point)), complex(pred.evalf(20, subs=point))
  except Exception:  # still symbolic (unknown functions), overflow, ...
    return None
  if not all(map(math.isfinite, (a.real, a.imag, b.real, b.imag))):
    return None
  gap = abs(a - b) / max(1.0, abs(a), abs(b))
  if gap > 1e-4:
    return False
  if not symbols and gap < 1e-12:
    return True
  return None


# Commands the LaTeX parser evaluates while parsing (gcd/lcm through nsimplify, binomial, Gamma): with a power, a
# factorial or a 5-digit number in the answer, parsing alone can run for minutes (in C for \\gcd(10^{10^{10}}, 3)).
_EAGER_CMDS = re.compile(r"\\(?:gcd|lcm|[dt]?binom|choose|Gamma)(?![A-Za-z])")
_EAGER_ARGS = re.compile(r"[\^!]|\d{5}")
_ATOM_LOG10 = math.log10(40)  # symbols count like the probe point's numerators and denominators
_LOG10_E = math.log10(math.e)


def _pow10(x: float) -> float:
  return 10.0**x if x < 300 else math.inf


def _log_size(e, bound: dict) -> float:
  """Upper bound on log10 of the largest number (|value|, numerator or denominator) that evaluating `e` exactly or
  at the probe point could build; cheap, computes nothing big. `bound` maps the variables of enclosing sums,
  products and integrals to the log-size of their limits."""
  import sympy
  from sympy.concrete.expr_with_limits import ExprWithLimits

  if isinstance(e, sympy.MatrixBase):
    return max((_log_size(x, bound) for x in e), default=0.0) if len(e) <= 10**4 else math.inf
  if not isinstance(e, sympy.Basic):
    return 0.0
  if e.is_Rational:
    return max(math.log10(abs(e.p) or 1), math.log10(e.q))
  if e.is_Float:
    man, exp = e._mpf_[1:3]
    return abs(math.log10(man) + exp * math.log10(2)) if man else 0.0
  if e.is_Atom:
    return bound.get(e, _ATOM_LOG10)
  if isinstance(e, sympy.Pow):
    base, ex = e.args
    sb, sx = _log_size(base, bound), _log_size(ex, bound)
    if sx == math.inf or (base.is_Integer and abs(base.p) <= 1):
      return sx
    return max(sb * _pow10(sx) if sb else 0.0, sx)  # |b^x| <= |b|^|x|, one factor of |b| per unit of |x|
  args = [_log_size(a, bound) for a in e.args]
  top = max(args, default=0.0)
  if isinstance(e, (sympy.exp, sympy.sinh, sympy.cosh)):
    return max(_LOG10_E * _pow10(top), top)
  if type(e).__module__.startswith("sympy.functions.combinatorial") or isinstance(e, sympy.gamma):
    return _pow10(top) * max(1.0, top) if top <= 7 else math.inf  # n! <= n^n, and binomial, fibonacci, ... below
  if isinstance(e, ExprWithLimits):
    inner, terms = dict(bound), 0.0
    for var, *ends in e.limits:
      inner[var] = max((_log_size(x, bound) for x in ends), default=_ATOM_LOG10)
      if len(ends) == 2 and all(x.is_Integer for x in ends):
        terms += math.log10(max(1, ends[1] - ends[0] + 1))
      else:  # symbolic or infinite ends: sympy sums those in closed form or not at all
        terms += inner[var] + math.log10(2)
    body = _log_size(e.function, inner)
    if isinstance(e, sympy.Product):
      return _pow10(terms) * body if terms <= MAX_TERMS_LOG10 else math.inf
    if isinstance(e, sympy.Sum):
      return body + terms if terms <= MAX_TERMS_LOG10 else math.inf
    return body
  if isinstance(e, sympy.Add):
    return top + math.log10(len(args))
  if isinstance(e, sympy.Mul):
    return sum(args)
  return top  # other functions, relations, sets, tuples: no bigger than their arguments


def _bounded(e) -> bool:
  """False when evaluating `e` could build a number past MAX_DIGITS digits (see the module docstring)."""
  try:
    return _log_size(e, {}) <= MAX_DIGITS
  except (RecursionError, OverflowError, ValueError):
    return False


def _mv_equal(pred: str, gold: str) -> bool:
  from math_verify import verify

  if any(_EAGER_CMDS.search(s) and _EAGER_ARGS.search(s) for s in (pred, gold)):
    return False
  timeout = _mv_timeout()
  gold_parsed, pred_parsed = _mv_parse(gold, timeout), _mv_parse(pred, timeout)
  if not gold_parsed or not pred_parsed:
    return False
  if not all(map(_bounded, gold_parsed + pred_parsed)):
    return False
  try:
    with Deadline(timeout) if timeout else contextlib.nullcontext():  # else unbounded or under an outer timer
      quick = _compare_at_a_point(gold_parsed[0], pred_parsed[0])
  except ScoreTimeout:
    return False
  if quick is not None:
    return quick
  try:
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout))
  except Exception:  # verify swallows most errors itself; anything else is "not shown equal"
    return False


@functools.lru_cache(maxsize=16384)
def answers_match(pred: str | None, gold: str) -> bool:
  """True if the predicted answer equals the gold answer (string, numeric, or symbolic equality)."""
  if pred is None:
    return False
  npred, ngold = normalize_answer(pred), normalize_answer(gold)
  if not npred or not ngold:
    return False
  if npred == ngold:
    return True
  if npred.isalpha() and ngold.isalpha():  # words or choice letters: case-insensitive, never symbolic
    return npred.lower() == ngold.lower()
  vpred, vgold = to_number(npred), to_number(ngold)
  if vpred is not None and vgold is not None:
    return numbers_close(vpred, vgold)
  if len(npred) > MAX_SYMBOLIC_CHARS or len(ngold) > MAX_SYMBOLIC_CHARS:
    return False  # not a final answer but a paragraph; LaTeX-parsing it takes seconds
  return _mv_equal(_clean(pred), _clean(gold))


def math_reward(completion: str, gold: str) -> float:
  """1.0 if the completion's extracted final answer matches gold, else 0.0."""
  return 1.0 if answers_match(extract_answer(completion), str(gold)) else 0.0
