"""The EMA teacher: its update and its momentum schedule."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xanysat.train.schedules import cosine_schedule

__all__ = ["ema_update", "momentum_at"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t = momentum * t + (1 - momentum) * s`` for every parameter pair (``torch._foreach_*``).

    Args:
        teacher: changed in place.
        student: the same architecture (parameters in the same order).
        momentum: the teacher's share.

    Raises:
        ValueError: the two modules have different numbers of parameters.

    Example:
        >>> t, s = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> expected = 0.9 * t.weight + 0.1 * s.weight
        >>> ema_update(t, s, 0.9)
        >>> torch.allclose(t.weight, expected)
        True
    """
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}; they must match.")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


def momentum_at(step: int, total_steps: int, *, start: float = 0.996, end: float = 1.0,
                shape: Literal["linear", "cosine"] = "linear") -> float:
    """Teacher momentum at ``step`` (SPEC 5: linear 0.996 -> 1.0 over ``ipe * epochs`` steps).

    The release's generator yields ``start + i * (end - start) / total`` for the i-th backward
    (i from 0); after ``total_steps`` this stays at ``end``.

    Args:
        step: the backward pass, from 0.
        total_steps: steps from ``start`` to ``end``.
        start, end: momentum at step 0 and at ``total_steps``.
        shape: ``"linear"`` (official) or ``"cosine"`` (``cosine_schedule``).

    Returns:
        The momentum.

    Example:
        >>> momentum_at(0, 100), momentum_at(50, 100), momentum_at(100, 100)
        (0.996, 0.998, 1.0)
    """
    if shape == "cosine":
        return cosine_schedule(step, total_steps, start, end)
    if shape != "linear":
        raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return start + t * (end - start)
