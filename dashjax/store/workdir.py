"""What a run folder holds, and the decisions made on it before a model loads: refuse a used folder, resume, start
fresh or move an old run aside. Local and gs:// folders alike; nothing here changes a folder unless it says so."""

from __future__ import annotations

import dataclasses
import time

from dashjax.store import paths

LOGS = ("metrics.jsonl", "metrics.jsonl.parts")


@dataclasses.dataclass(frozen=True)
class RunState:
  has_metrics: bool
  steps: tuple[int, ...]  # finished (committed) checkpoint steps, ascending
  has_checkpoints: bool  # checkpoints/ holds anything, finished or not

  @property
  def used(self) -> bool:
    return self.has_metrics or self.has_checkpoints


def finished_steps(checkpoint_dir: str) -> list[int]:
  """Checkpoint steps Orbax finished writing (on an object store: those with its commit marker)."""
  if paths.is_remote(checkpoint_dir):
    from orbax.checkpoint import path as ocp_path

    return sorted(ocp_path.step.checkpoint_steps(checkpoint_dir))
  return sorted(int(n) for n in paths.listdir(checkpoint_dir) if n.isdigit() and paths.is_dir(
      paths.join(checkpoint_dir, n)))


def run_state(workdir: str) -> RunState:
  names = set(paths.listdir(workdir))
  ckpt = paths.join(workdir, "checkpoints")
  held = paths.listdir(ckpt) if "checkpoints" in names else []
  return RunState(has_metrics=bool(names & set(LOGS)), steps=tuple(finished_steps(ckpt)) if held else (),
                  has_checkpoints=bool(held))


@dataclasses.dataclass(frozen=True)
class Decision:
  problem: str | None = None  # refuse with this one line
  resume: bool = False
  move_aside: bool = False


def decide(workdir: str, *, resume: bool, overwrite: bool, auto_resume: bool = False) -> Decision:
  """--resume continues a run that has a checkpoint; --overwrite moves a used folder aside; --auto_resume continues
  when there is a checkpoint and starts fresh when the folder holds nothing; a used folder is otherwise refused."""
  given = [f for f, on in (("--resume", resume), ("--auto_resume", auto_resume), ("--overwrite", overwrite)) if on]
  if len(given) > 1:
    return Decision(f"{' and '.join(given)} contradict each other: continue the run in WORKDIR or start over, not "
                    f"both")
  s = run_state(workdir)
  if resume or auto_resume:
    if s.steps:
      return Decision(resume=True)
    if auto_resume and not s.used:
      return Decision()
    fix = ("start over with --overwrite (moves the old logs aside)" if s.used else "start a new run without --resume")
    flag = "--auto_resume" if auto_resume else "--resume"
    what = "holds a run but no finished checkpoint" if auto_resume else "holds no checkpoint to resume from"
    return Decision(f"{flag}: {workdir} {what}; {fix}")
  if not s.used:
    return Decision()
  if overwrite:
    return Decision(move_aside=True)
  held = (["metrics.jsonl"] if s.has_metrics else []) + (
      [f"checkpoints up to step {s.steps[-1]}"] if s.steps else ["an unfinished checkpoint"] if s.has_checkpoints
      else [])
  return Decision(f"{workdir} already holds a run ({', '.join(held)}); continue it with --resume (or "
                  f"--auto_resume), or start over with --overwrite (moves the old run to "
                  f"{workdir.rstrip('/')}.replaced-YYYYmmdd-HHMMSS)")


def move_aside(workdir: str) -> str:
  base = f"{workdir.rstrip('/')}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
  target, n = base, 1
  while paths.exists(target):
    n += 1
    target = f"{base}-{n}"
  paths.rename(workdir, target)
  return target
