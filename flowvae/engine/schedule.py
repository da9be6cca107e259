"""The learning rate is a function of the step and the planned step count alone.

    lr(step) = train.lr * (step + 1) / W                            for step < W = train.warmup_steps
             = train.lr                                             constant, after the warm-up
             = train.lr * (1 + cos(pi * (step - W) / (P - W))) / 2   cosine, reaching 0 at step P

``step`` counts the optimiser steps already taken (0 for the first one) and P is the planned step
count: ``train.max_steps``, or, when ``train.max_steps`` is 0, the count planned once from the time
budget ``train.max_minutes`` at the end of the warm-up (:func:`plan_steps`, from the speed measured
during the warm-up). The planned count is printed and stored in the checkpoint, so ``--resume``
continues the same schedule on any machine; a time budget only ever stops a run, it never changes the
lr. No clock is read here: a config and a seed give one model wherever it trains.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..config import MIN_PLANNING_STEPS  # noqa: F401  (re-exported)


def get_lr(step: int, t, planned_steps: Optional[int]) -> float:
    """The lr of optimiser step ``step`` (0-based) under the train config ``t`` and the planned step
    count (None only while a time-planned run is still in its warm-up)."""
    warm = t.warmup_steps
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.lr_schedule == "constant":
        return t.lr
    if planned_steps is None:
        raise ValueError(f"the cosine lr of step {step} needs the planned step count, which a run planned "
                         f"from train.max_minutes decides at the end of its warm-up (step {warm})")
    span = planned_steps - warm
    frac = 1.0 if span <= 0 else min(1.0, (step - warm) / span)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def configured_plan(t) -> Optional[int]:
    """The planned step count a config fixes up front: ``train.max_steps``; None when the run is planned
    from its time budget (``train.max_steps: 0``)."""
    return t.max_steps if t.max_steps > 0 else None


def plan_due(t, step: int, planned_steps: Optional[int]) -> bool:
    """Whether a run planned from its time budget decides its step count before optimiser step ``step``."""
    return planned_steps is None and step >= t.warmup_steps


def plan_steps(step: int, train_seconds: float, budget_seconds: float, step_seconds: Sequence[float]) -> int:
    """The step count that fills the time budget: ``step`` steps taken in ``train_seconds``, plus as many
    as the rest of ``budget_seconds`` allows at the mean time of the timed steps (this process's; the
    first quarter of them, which hold the start-up cost, is left out when there are 4 or more)."""
    times = list(step_seconds)
    times = times[len(times) // 4:] if len(times) >= 4 else times
    per_step = sum(times) / len(times) if times else math.inf
    left = max(0.0, budget_seconds - train_seconds)
    return step + (int(left / per_step) if per_step > 0 and math.isfinite(per_step) else 0)


def resumed_plan(t, saved_t, state: dict) -> Optional[int]:
    """The planned step count a resumed run continues with.

    * ``train.max_steps`` changed on resume (> 0): the run is re-planned over the new count from here on
      (the steps already taken keep the lr they had).
    * Otherwise the checkpoint's stored plan (None: a time-planned run saved during its warm-up).
    * A checkpoint from before plans were stored (it holds a LambdaLR ``scheduler`` state) ran its
      cosine over max(step / max_steps, seconds / (60 max_minutes)); it continues as the step plan that
      puts it at the same point of the cosine, so its lr does not jump.
    """
    if t.max_steps > 0 and t.max_steps != saved_t.max_steps:
        return t.max_steps
    if "planned_steps" in state:
        return state["planned_steps"]
    step, seconds = state["step"], state.get("train_seconds", 0.0)
    frac = step / saved_t.max_steps
    if saved_t.max_minutes > 0:
        frac = max(frac, seconds / (saved_t.max_minutes * 60))
    if saved_t.lr_schedule != "cosine" or frac <= 0 or step <= t.warmup_steps:
        return saved_t.max_steps
    if frac >= 1:
        return step
    return min(saved_t.max_steps, t.warmup_steps + math.ceil((step - t.warmup_steps) / frac))
