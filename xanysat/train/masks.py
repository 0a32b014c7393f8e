"""Which patches the student sees: I-JEPA block masks, modality masks, temporal dropout.

Masks are index tensors (ijepa ``apply_masks``): patch ``k`` of an ``h x w`` grid is
``k = row * w + col``. Randomness comes from an optional ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from xanysat.sensors.table import MODALITIES

__all__ = [
    "BlockMasks",
    "apply_modality_mask",
    "drop_dates",
    "gather_patches",
    "sample_block_masks",
    "sample_modality_mask",
]


class BlockMasks(NamedTuple):
    """Patch indices on the ``h x w`` grid, the same counts for every sample.

    Attributes:
        context: ``(B, N_context)`` int64, increasing within a sample.
        targets: ``(n_targets, B, N_target)`` int64, increasing within a block.

    Example:
        >>> masks = sample_block_masks(2, (8, 8), generator=torch.Generator().manual_seed(0))
        >>> context, targets = masks  # a NamedTuple: unpacks, or masks.context / masks.targets
        >>> context.shape[0], tuple(targets.shape[:2])
        (2, (4, 2))
        >>> bool((context.diff(dim=1) > 0).all() and (targets.diff(dim=2) > 0).all())
        True
    """

    context: Tensor
    targets: Tensor


def _block_size(grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float],
                generator: torch.Generator | None) -> tuple[int, int]:
    # I-JEPA draws ONE number for both the scale and the aspect ratio; kept as released.
    height, width = grid
    r = torch.rand(1, generator=generator).item()
    keep = int(height * width * (scale[0] + r * (scale[1] - scale[0])))
    ratio = aspect[0] + r * (aspect[1] - aspect[0])
    h = round(math.sqrt(keep * ratio))
    w = round(math.sqrt(keep / ratio))
    # I-JEPA: a block never spans the whole grid side (h < height); at least 1 here, where
    # the release would fail on 1-patch-wide grids.
    return max(1, min(h, height - 1)), max(1, min(w, width - 1))


def _block(grid: tuple[int, int], size: tuple[int, int], allowed: list[Tensor] | None, min_keep: int,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One block position; with ``allowed`` regions, relaxes one region per 20 failures (I-JEPA)."""
    height, width = grid
    h, w = size
    tries, timeout = 0, 20
    while True:
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[top:top + h, left:left + w] = True
        if allowed is not None:
            for region in allowed[:max(len(allowed) - tries, 0)]:
                mask &= region
        index = mask.flatten().nonzero().squeeze(1)
        if len(index) > min_keep:
            break
        timeout -= 1
        if timeout == 0:
            tries, timeout = tries + 1, 20
            if tries > 20:
                raise ValueError(
                    f"could not place a {h}x{w} block with more than min_keep={min_keep} patches on the "
                    f"{height}x{width} patch grid; lower min_keep or use a smaller patch size."
                )
    complement = torch.ones(height, width, dtype=torch.bool)
    complement[top:top + h, left:left + w] = False
    return index, complement


def sample_block_masks(batch_size: int, grid: tuple[int, int], *, generator: torch.Generator | None = None,
                       n_targets: int = 4, target_scale: tuple[float, float] = (0.2, 0.8),
                       target_aspect: tuple[float, float] = (0.75, 1.5),
                       context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 0,
                       allow_overlap: bool = False) -> BlockMasks:
    """I-JEPA multi-block masks (official ``MaskCollator``, SPEC 5 (c)).

    Block sizes are drawn once per batch (targets, then the square context block), positions
    per sample. The context block loses every target block's patches; when that leaves
    ``min_keep`` or fewer patches 20 times in a row, the constraint of the last remaining target
    is dropped (I-JEPA's relaxation), so on small grids the context may then overlap targets.
    All masks are truncated to the batch minimum (first indices kept), so counts are equal.

    Args:
        batch_size: B.
        grid: ``(h, w)`` patches.
        generator: random source (None: torch's global one).
        n_targets, target_scale, target_aspect, context_scale, min_keep, allow_overlap: as
            ``JEPAConfig``.

    Returns:
        ``BlockMasks(context (B, Nc), targets (n_targets, B, Nt))`` on the CPU.

    Example:
        >>> m = sample_block_masks(2, (6, 6), generator=torch.Generator().manual_seed(0))
        >>> m.context.shape[0], tuple(m.targets.shape[:2])
        (2, (4, 2))
    """
    size_t = _block_size(grid, target_scale, target_aspect, generator)
    size_c = _block_size(grid, context_scale, (1.0, 1.0), generator)
    contexts, targets = [], []
    for _ in range(batch_size):
        blocks = [_block(grid, size_t, None, min_keep, generator) for _ in range(n_targets)]
        targets.append([index for index, _ in blocks])
        allowed = None if allow_overlap else [complement for _, complement in blocks]
        contexts.append(_block(grid, size_c, allowed, min_keep, generator)[0])
    n_t = min(len(t) for sample in targets for t in sample)
    n_c = min(len(c) for c in contexts)
    target = torch.stack([torch.stack([sample[k][:n_t] for sample in targets]) for k in range(n_targets)])
    return BlockMasks(torch.stack([c[:n_c] for c in contexts]), target)


def sample_modality_mask(batch_size: int, n_modalities: int, n_patches: int, *, ratio: float = 0.5,
                         generator: torch.Generator | None = None) -> Tensor:
    """Which of the ``M * P`` context tokens (sensor-major) the student keeps (SPEC 5 (d)).

    Per patch one random sensor is always kept; of the other ``(M - 1) * P`` tokens,
    ``int((M - 1) * P * (1 - ratio))`` random ones are kept too.

    Args:
        batch_size: B.
        n_modalities: M sensors.
        n_patches: P context patches per sensor.
        ratio: fraction of the non-guaranteed tokens masked.
        generator: random source (None: torch's global one).

    Returns:
        ``(B, M * P)`` bool, True = kept; the same count of True for every sample.

    Example:
        >>> keep = sample_modality_mask(2, 3, 4, generator=torch.Generator().manual_seed(0))
        >>> keep.sum(1).tolist()  # 4 guaranteed + int(8 * 0.5)
        [8, 8]
    """
    M, P = n_modalities, n_patches
    forced = torch.randint(M, (batch_size, P), generator=generator) * P + torch.arange(P)
    noise = torch.rand(batch_size, M * P, generator=generator).scatter_(1, forced, 2.0)
    extra = noise.argsort(dim=1)[:, :int(P * (M - 1) * (1 - ratio))]
    keep = torch.zeros(batch_size, M * P, dtype=torch.bool)
    return keep.scatter_(1, forced, True).scatter_(1, extra, True)


def apply_modality_mask(tokens: Tensor, keep: Tensor, mask_token: Tensor) -> Tensor:
    """Replace the tokens not kept (position embedding included, as released) by ``mask_token``.

    Args:
        tokens: ``(B, L, D)``.
        keep: ``(B, L)`` bool, True = kept (``sample_modality_mask``).
        mask_token: ``(1, 1, D)``.

    Returns:
        ``(B, L, D)``, ``tokens`` where ``keep`` else ``mask_token``.

    Example:
        >>> tokens, mask_token = torch.zeros(1, 3, 2), torch.full((1, 1, 2), 7.0)
        >>> apply_modality_mask(tokens, torch.tensor([[True, False, True]]), mask_token)[0].tolist()
        [[0.0, 0.0], [7.0, 7.0], [0.0, 0.0]]
    """
    return torch.where(keep.to(tokens.device)[..., None], tokens, mask_token.to(tokens.dtype))


def drop_dates(batch: Mapping[str, Tensor], *, ratio: float = 0.5,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Temporal dropout: keep ``max(1, int(T * (1 - ratio)))`` random dates of every time series.

    Each sample keeps its own dates, the same count across the batch (official ``mask_dates``);
    kept dates stay in time order (the L-TAE does not depend on the order). ``<name>_mask``
    follows the data.

    Args:
        batch: as ``AnySat.forward``.
        ratio: fraction of the dates dropped.
        generator: random source (None: torch's global one).

    Returns:
        A new batch dict; sensors without dates are passed through.

    Example:
        >>> from xanysat.testing import synthetic_batch
        >>> b = drop_dates(synthetic_batch(("s2",), n_dates=6), generator=torch.Generator().manual_seed(0))
        >>> tuple(b["s2"].shape), tuple(b["s2_dates"].shape)
        ((2, 3, 10, 6, 6), (2, 3))
    """
    out = dict(batch)
    for name, x in batch.items():
        modality = MODALITIES.get(name)
        if modality is None or not modality.time_series:
            continue
        B, T = x.shape[:2]
        keep = max(1, int(T * (1 - ratio)))
        index = torch.rand(B, T, generator=generator).argsort(dim=1)[:, :keep].sort(dim=1).values
        index = index.to(x.device)
        rows = torch.arange(B, device=x.device)[:, None]
        out[name] = x[rows, index]
        out[f"{name}_dates"] = batch[f"{name}_dates"][rows, index]
        mask = batch.get(f"{name}_mask")
        if mask is not None:
            out[f"{name}_mask"] = mask[rows, index]
    return out


def gather_patches(x: Tensor, index: Tensor) -> Tensor:
    """``x: (B, P, D)``, ``index: (B, K)`` -> ``(B, K, D)``.

    Args:
        x: ``(B, P, D)`` tokens.
        index: ``(B, K)`` int64 positions along ``P``, per sample.

    Returns:
        ``(B, K, D)``: ``out[b, k] = x[b, index[b, k]]``.

    Example:
        >>> x = torch.arange(12.0).view(1, 4, 3)
        >>> gather_patches(x, torch.tensor([[3, 0]])).tolist()
        [[[9.0, 10.0, 11.0], [0.0, 1.0, 2.0]]]
    """
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
