"""The optimizer and its hyperparameters as functions of step (SPEC 5, I-JEPA variants)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "cosine_schedule",
    "lr_at",
    "plateau_scheduler",
    "set_hyperparameters",
    "weight_decay_at",
]


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (``total_steps`` and after).

    Args:
        step: the step (negative steps count as 0).
        total_steps: steps from ``start`` to ``end``.
        start: value at step 0.
        end: value at ``total_steps`` and after.

    Returns:
        ``end + (start - end) * (1 + cos(pi * step / total_steps)) / 2``.

    Example:
        >>> [cosine_schedule(s, 10, 1.0, 0.0) for s in (0, 5, 10, 20)]
        [1.0, 0.5, 0.0, 0.0]
    """
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def lr_at(step: int, *, base_lr: float = 5e-5, warmup_steps: int = 0, total_steps: int | None = None,
          final_lr: float | None = None) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine to ``final_lr``.

    The defaults are the official setting: a constant 5e-5 (SPEC 5), lowered only by
    ``plateau_scheduler`` on the validation loss, which is not a function of step.

    Args:
        step: the optimizer step.
        base_lr: the rate after warm-up.
        warmup_steps: steps of the linear warm-up (``base_lr * (step + 1) / warmup_steps``).
        total_steps: end of the cosine (None: constant ``base_lr`` after warm-up).
        final_lr: the rate at ``total_steps`` (None: constant ``base_lr`` after warm-up).

    Returns:
        The learning rate.

    Example:
        >>> lr_at(0), lr_at(10**6)
        (5e-05, 5e-05)
        >>> lr_at(0, warmup_steps=10, base_lr=1.0)
        0.1
        >>> lr_at(55, warmup_steps=10, total_steps=100, base_lr=1.0, final_lr=0.0)
        0.5
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps is None or final_lr is None:
        return base_lr
    return cosine_schedule(step - warmup_steps, total_steps - warmup_steps, base_lr, final_lr)


def weight_decay_at(step: int, *, start: float = 0.05, end: float | None = None,
                    total_steps: int | None = None) -> float:
    """AdamW weight decay at ``step``: constant 0.05 (SPEC 5), or cosine to ``end`` (I-JEPA style).

    Args:
        step: the optimizer step.
        start: weight decay at step 0 (and throughout when constant).
        end: weight decay at ``total_steps`` (None: constant ``start``).
        total_steps: length of the cosine (None: constant ``start``).

    Returns:
        The weight decay.

    Example:
        >>> weight_decay_at(1000), weight_decay_at(1000, end=0.4)  # constant without total_steps
        (0.05, 0.05)
        >>> weight_decay_at(50, start=0.0, end=1.0, total_steps=100)
        0.5
    """
    if end is None or total_steps is None:
        return start
    return cosine_schedule(step, total_steps, start, end)


def build_optimizer(params: Iterable[nn.Parameter] | nn.Module, *, lr: float = 5e-5,
                    weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad (SPEC 5: lr 5e-5, weight decay 0.05 on all).

    Args:
        params: parameters, or a module: its ``trainable_parameters()`` when it has them
            (``JEPA``: not the teacher), else its ``parameters()``.
        lr: learning rate.
        weight_decay: AdamW weight decay, on every parameter.

    Returns:
        A ``torch.optim.AdamW`` with one parameter group.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> _ = layer.bias.requires_grad_(False)  # frozen: left out
        >>> group = build_optimizer(layer, lr=1e-3).param_groups[0]
        >>> len(group["params"]), group["lr"], group["weight_decay"]
        (1, 0.001, 0.05)
    """
    if isinstance(params, nn.Module):
        params = params.trainable_parameters() if hasattr(params, "trainable_parameters") else params.parameters()
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def set_hyperparameters(optimizer: torch.optim.Optimizer, *, lr: float | None = None,
                        weight_decay: float | None = None) -> None:
    """Write this step's ``lr`` / ``weight_decay`` into every parameter group.

    Args:
        optimizer: any torch optimizer.
        lr: the new learning rate (None: unchanged).
        weight_decay: the new weight decay (None: unchanged).

    Example:
        >>> optimizer = build_optimizer(nn.Linear(2, 2))
        >>> set_hyperparameters(optimizer, lr=lr_at(0, warmup_steps=10, base_lr=1.0))
        >>> optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]
        (0.1, 0.05)
    """
    for group in optimizer.param_groups:
        if lr is not None:
            group["lr"] = lr
        if weight_decay is not None:
            group["weight_decay"] = weight_decay


def plateau_scheduler(optimizer: torch.optim.Optimizer, *, factor: float = 0.1, patience: int = 10
                      ) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The official ``ReduceLROnPlateau(mode='min', factor=0.1, patience=10)`` on the validation loss, per epoch.

    Args:
        optimizer: the optimizer whose learning rate it lowers.
        factor: multiplies the learning rate on a plateau.
        patience: epochs without improvement that are tolerated.

    Returns:
        The scheduler; call ``scheduler.step(validation_loss)`` once per epoch.

    Example:
        >>> optimizer = build_optimizer(nn.Linear(2, 2), lr=1.0)
        >>> scheduler = plateau_scheduler(optimizer, patience=1)
        >>> for validation_loss in (1.0, 1.0, 1.0):  # no improvement for 2 > patience epochs
        ...     scheduler.step(validation_loss)
        >>> optimizer.param_groups[0]["lr"]
        0.1
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)
