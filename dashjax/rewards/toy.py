"""A lenient reward for smoke tests and tiny random models: the gold answer appears anywhere in the completion.

It gives a random-weight model a real mix of rewarded and unrewarded samples, which exercises advantages and
filtering in fast tests; it is not a grader for real training.
"""


def contains_answer(completion: str, target) -> float:
  return float(str(target).strip() != "" and str(target).strip() in completion)
