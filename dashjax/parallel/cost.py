"""Speed without the hardware: the TPU compiler's cost model per compiled program, and a decode step's floor.

`compiled.cost_analysis()` of a program compiled for a TPU slice (libtpu, on any machine) gives `flops`, `bytes
accessed` and `optimal_seconds` per chip. These are the compiler's predictions, never measurements. A `while` body
is counted once whatever its trip count, so loops are costed per iteration (one decode step, one micro-step) and the
trip counts are multiplied in by the caller. XLA:CPU reports flops and bytes but no seconds: `predicted_s` is None.

The decode floor of one step on a chip: the bytes it must read (the compute-dtype weights, the live KV) over the
chip's HBM bandwidth, or its FLOPs over the chip's peak if that is larger.
"""

from __future__ import annotations

import dataclasses


class CostError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: float  # nominal HBM per chip
  bandwidth: float  # HBM bytes per second
  peak_flops: float  # bfloat16 FLOP per second


CHIPS = {"v5e": Chip("v5e", 16e9, 819e9, 197e12), "v6e": Chip("v6e", 32e9, 1640e9, 918e12),
         "v4": Chip("v4", 32e9, 1228e9, 275e12), "v5p": Chip("v5p", 95e9, 2765e9, 459e12)}
# libtpu's device_kind strings (longest prefix wins): v5e reports "TPU v5 lite", v5p "TPU v5", v6e "TPU v6 lite".
_KINDS = {"TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v6 lite": "v6e", "TPU v6e": "v6e", "TPU v4": "v4",
          "TPU v5p": "v5p", "TPU v5": "v5p"}


def chip_for(device_kind: str) -> Chip:
  """The bandwidth/peak entry of a TPU device kind; one line naming the known kinds if there is none."""
  for prefix in sorted(_KINDS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return CHIPS[_KINDS[prefix]]
  raise CostError(f"no bandwidth entry for chip kind {device_kind!r}; known kinds: "
                  f"{', '.join(f'{k} ({c.bandwidth / 1e9:.0f} GB/s)' for k, c in CHIPS.items())}")


def program_cost(compiled, chip: Chip | None = None) -> dict:
  """flops, bytes_accessed and predicted_s of one compiled program (per chip).

  predicted_s is the roofline of the compiler's own counts on `chip`, max(flops / peak, bytes / bandwidth): the TPU
  compiler's `optimal_seconds` is negative (unknown) for programs with loops, so it is kept apart (`optimal_s`,
  None when unknown). None without a chip entry (XLA:CPU, GPUs)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    ca = None
  if isinstance(ca, (list, tuple)):  # older JAX: one dict per computation
    ca = ca[0] if ca else None
  ca = ca or {}
  flops = float(ca["flops"]) if "flops" in ca else None
  nbytes = float(ca["bytes accessed"]) if "bytes accessed" in ca else None
  seconds = ca.get("optimal_seconds")
  predicted = None
  if chip is not None and flops is not None and nbytes is not None:
    predicted = max(flops / chip.peak_flops, nbytes / chip.bandwidth)
  return {"flops": flops, "bytes_accessed": nbytes, "predicted_s": predicted,
          "optimal_s": float(seconds) if seconds is not None and seconds > 0 else None}


def kv_bytes_per_token(model_cfg, itemsize: int) -> int:
  """Keys and values of one token over all layers."""
  return model_cfg.num_layers * 2 * model_cfg.num_kv_heads * model_cfg.head_dim * itemsize


def decode_floor(chip: Chip, *, weight_bytes: float, rows: int, prompts: int, prompt_len: int, context: int,
                 kv_token_bytes: int, flops: float | None = None) -> dict:
  """The least time of one decode step on one chip holding `rows` rows of `prompts` prompts at `context` keys each.

  The prompt's `prompt_len` keys are read once per prompt (its samples share them); the rest of the context, the
  row's generated keys, once per row."""
  kv = (prompts * prompt_len + rows * max(context - prompt_len, 0)) * kv_token_bytes
  memory_s = (weight_bytes + kv) / chip.bandwidth
  compute_s = (flops or 0.0) / chip.peak_flops
  return {"weight_bytes": int(weight_bytes), "kv_bytes": int(kv), "memory_s": memory_s, "compute_s": compute_s,
          "floor_s": max(memory_s, compute_s)}
