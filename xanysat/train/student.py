"""The masked student forward: the encoder's own modules on the context patches only."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from xanysat.nn.batch import check_batch
from xanysat.nn.encoder import AnySat
from xanysat.train.masks import apply_modality_mask, sample_modality_mask

__all__ = ["encode_context"]


def encode_context(model: AnySat, batch: Mapping[str, Tensor], patch_size: int, context: Tensor, *,
                   mask_token: Tensor | None = None, modality_mask_ratio: float = 0.5,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The student forward on the context patches only (official ``forward_proj`` + ``forward_transformer``).

    Projectors and patch encoder run on every patch; each sensor's tokens get the patch
    position embedding and the same ``context`` patches are gathered from every sensor; with
    ``mask_token``, modality masking replaces some of them; the class token (and MODIS tokens)
    are prepended; the combiner's self-attention blocks run on that; the cross block's queries
    are the class token and the context positions.

    Args:
        model: the encoder.
        batch, patch_size: as ``AnySat.forward``.
        context: ``(B, Nc)`` patch indices.
        mask_token: ``(1, 1, D)`` learned token, or None for no modality masking.
        modality_mask_ratio: see ``sample_modality_mask``.
        generator: random source for modality masking.

    Returns:
        ``(B, 1 + Nc, D)`` (class token first) and ``{sensor: (B, P, D)}``, the patch-encoder
        tokens of every patch (for the contrastive loss).

    Raises:
        ValueError: the batch has no patch-level sensor (tile tokens only).

    Example:
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> model = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> batch = synthetic_batch(("s2",), extent_m=60, batch_size=2)  # 3 x 3 patches of 20 m
        >>> context = torch.tensor([[0, 4, 8], [1, 2, 3]])  # 3 context patches per sample
        >>> x, tokens = encode_context(model, batch, 20, context, mask_token=torch.zeros(1, 1, 32),
        ...                            generator=torch.Generator().manual_seed(0))
        >>> tuple(x.shape), {k: tuple(v.shape) for k, v in tokens.items()}
        ((2, 4, 32), {'s2': (2, 9, 32)})
    """
    layout = check_batch(batch, patch_size, tuple(model.projectors))
    if layout.grid == (0, 0):
        raise ValueError(f"JEPA needs a patch-level sensor; {', '.join(layout.sensors)} gives tile tokens only.")
    tokens = model.sensor_tokens(batch, layout)
    context = context.to(model.cls_token.device)
    x = model.embed_positions(list(tokens.patches.values()), layout.grid, layout.scale, positions=context)
    if mask_token is not None and modality_mask_ratio > 0:
        keep = sample_modality_mask(layout.batch_size, len(tokens.patches), context.shape[1],
                                    ratio=modality_mask_ratio, generator=generator)
        x = apply_modality_mask(x, keep, mask_token)
    x = model.combine(x, list(tokens.tiles.values()), layout.grid, layout.scale, positions=context)
    return x, tokens.patches
