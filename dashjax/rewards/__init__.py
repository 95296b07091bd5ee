"""Verifiable rewards: final-answer extraction, math equivalence, reasoning-gym scoring, a timeout-safe pool.

Importing this package is cheap: math_verify/sympy and reasoning_gym load on first use (and in pool workers).
"""

from dashjax.rewards.extract import extract_answer, last_boxed, last_number
from dashjax.rewards.gym import gym_reward, gym_score
from dashjax.rewards.math import answers_match, math_reward, normalize_answer, to_number
from dashjax.rewards.pool import RewardBatch, RewardPool, register_scorer

__all__ = ["extract_answer", "last_boxed", "last_number", "gym_reward", "gym_score", "answers_match",
           "math_reward", "normalize_answer", "to_number", "RewardBatch", "RewardPool", "register_scorer"]
