"""Collapse monitor: how spread out and how many-dimensional embeddings are."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["collapse_stats", "effective_rank", "embedding_std"]


def embedding_std(x: Tensor) -> Tensor:
    """Mean over features of the standard deviation over samples; ``x: (..., D)``.

    Near 0 means collapse to a constant.

    Args:
        x: embeddings ``(..., D)``; every leading index is a sample.

    Returns:
        A scalar tensor (float32).

    Example:
        >>> round(float(embedding_std(torch.tensor([[0.0, 2.0], [2.0, 4.0]]))), 4)  # sqrt(2) per feature
        1.4142
        >>> float(embedding_std(torch.ones(5, 3)))  # collapsed
        0.0
    """
    return x.reshape(-1, x.shape[-1]).float().std(dim=0).mean()


def effective_rank(x: Tensor) -> Tensor:
    """``exp(entropy(s / sum(s)))`` of the singular values ``s`` of ``x: (..., D)`` (RankMe, uncentred).

    Between 1 (rank-one embeddings) and ``min(N, D)``.

    Args:
        x: embeddings ``(..., D)``; every leading index is a sample.

    Returns:
        A scalar tensor (float32).

    Example:
        >>> round(float(effective_rank(torch.eye(4))), 4), round(float(effective_rank(torch.ones(5, 3))), 4)
        (4.0, 1.0)
    """
    s = torch.linalg.svdvals(x.reshape(-1, x.shape[-1]).float())
    p = s / s.sum().clamp(min=1e-12)
    return torch.special.entr(p).sum().exp()


def collapse_stats(x: Tensor) -> dict[str, float]:
    """``{"std": embedding_std(x), "effective_rank": effective_rank(x)}`` as floats.

    Args:
        x: embeddings ``(..., D)``.

    Returns:
        ``{"std": float, "effective_rank": float}``.

    Example:
        >>> {k: round(v, 4) for k, v in collapse_stats(torch.eye(4)).items()}  # std of [1, 0, 0, 0] = 0.5
        {'std': 0.5, 'effective_rank': 4.0}
        >>> {k: round(v, 4) for k, v in collapse_stats(torch.ones(6, 4)).items()}  # collapsed
        {'std': 0.0, 'effective_rank': 1.0}
    """
    with torch.no_grad():
        return {"std": float(embedding_std(x)), "effective_rank": float(effective_rank(x))}
