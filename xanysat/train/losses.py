"""JEPA losses: teacher targets, the latent smooth-L1, cross-sensor MIL-NCE, and the optional
VICReg and position regularisers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from xanysat.train.masks import gather_patches

__all__ = [
    "jepa_loss",
    "mil_nce_loss",
    "position_loss",
    "position_means",
    "prediction_loss",
    "target_embeddings",
    "variance_covariance_loss",
]


def target_embeddings(patch_tokens: Tensor, targets: Tensor, *, norm: str = "layer") -> Tensor:
    """Teacher targets: LayerNorm without affine over features, then the target blocks.

    With ``norm="layer+batch"`` each feature of the layer-normed tokens is then standardised
    over every patch of the batch. A collapsing teacher makes every patch the same vector; the
    official targets then become trivially predictable, these do not (they are rescaled
    differences between patches), so collapse stops being a minimum of the loss.

    Args:
        patch_tokens: teacher patch tokens ``(B, P, D)`` (class token removed).
        targets: ``(n_targets, B, Nt)``.
        norm: ``"layer"``, ``"layer+batch"`` or ``"layer+position"`` (the mean over the batch is
            taken at each grid position, so what every sample has at a position, such as the
            positional encoding, is no target; then standardised per feature).

    Returns:
        ``(n_targets * B, Nt, D)``, block-major like ``Predictor``.

    Example:
        >>> tokens = torch.randn(2, 9, 8) + 5 * torch.randn(8)  # a strong shared component
        >>> out = target_embeddings(tokens, torch.tensor([[[0, 1], [2, 3]]]), norm="layer+batch")
        >>> tuple(out.shape)
        (2, 2, 8)
    """
    if norm not in ("layer", "layer+batch", "layer+position"):
        raise ValueError(f"target_norm must be 'layer', 'layer+batch' or 'layer+position', got {norm!r}.")
    h = F.layer_norm(patch_tokens, patch_tokens.shape[-1:])
    if norm != "layer":
        centred = h.float() - (h.float().mean(0, keepdim=True) if norm == "layer+position" else
                               h.float().reshape(-1, h.shape[-1]).mean(0))
        h = (centred / centred.reshape(-1, h.shape[-1]).std(0).clamp(min=1e-4)).to(h.dtype)
    return torch.cat([gather_patches(h, t.to(h.device)) for t in targets])


def prediction_loss(predictions: Tensor, targets: Tensor, *, beta: float = 1.0) -> Tensor:
    """Smooth-L1 (Huber, ``beta``) averaged over every element (official loss "mse").

    Args:
        predictions: predictor outputs, any shape.
        targets: teacher targets, the same shape.
        beta: where the loss turns from quadratic (``0.5 * d**2 / beta``) to linear
            (``|d| - 0.5 * beta``).

    Returns:
        A scalar.

    Example:
        >>> prediction_loss(torch.zeros(2), torch.tensor([0.5, 3.0]))  # (0.125 + 2.5) / 2
        tensor(1.3125)
    """
    return F.smooth_l1_loss(predictions, targets, beta=beta)


def mil_nce_loss(tokens: Sequence[Tensor] | Tensor, *, tau: float = 0.1, valid: Tensor | None = None,
                 negatives: str = "all") -> Tensor:
    """Cross-sensor MIL-NCE on patch tokens (official ``MILNCE``, SPEC 5).

    Every token of every sensor in the batch is a row; the logits are cosine similarities / tau
    to every other token except those of the same sample and sensor. Positives of a token are
    the same patch of the same sample in the other sensors; every other token is a negative.
    ``loss = mean over rows of [logsumexp(all) - logsumexp(positives)]``.

    Args:
        tokens: M tensors ``(B, P, D)`` (or one ``(M, B, P, D)``), one per sensor.
        tau: temperature.
        valid: optional ``(M, B, P)`` bool; invalid tokens are neither rows nor columns, and
            rows without a valid positive are left out of the mean.
        negatives: ``"all"`` (official) or ``"other-sensors"``: only tokens of the other sensors
            are columns (CLIP-like). With ``"all"``, other samples' tokens of the anchor's own
            sensor are negatives that are easier to confuse than any cross-sensor positive, so
            making every token the same vector lowers the loss to ``log(columns)``; with
            ``"other-sensors"`` that state is no minimum.

    Returns:
        A scalar; zero (with a graph) when fewer than two sensors give no positives.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> round(float(mil_nce_loss([a, a])), 4)  # positive cos 1 vs negative cos 0
        0.0
    """
    x = torch.stack(list(tokens)) if not isinstance(tokens, Tensor) else tokens
    M, B, P, D = x.shape
    if M < 2:
        return x.sum() * 0.0
    f = x.reshape(M * B * P, D).float()
    norm = f.norm(dim=1, keepdim=True)
    logits = (f @ f.T) / (norm * norm.T).clamp(min=1e-8) / tau
    sensor = torch.arange(M, device=f.device).repeat_interleave(B * P)
    sample = torch.arange(B, device=f.device).repeat_interleave(P).repeat(M)
    patch = torch.arange(P, device=f.device).repeat(M * B)
    same_sample = sample[:, None] == sample[None, :]
    same_sensor = sensor[:, None] == sensor[None, :]
    positive = same_sample & ~same_sensor & (patch[:, None] == patch[None, :])
    if negatives not in ("all", "other-sensors"):
        raise ValueError(f"negatives must be 'all' or 'other-sensors', got {negatives!r}.")
    excluded = same_sensor if negatives == "other-sensors" else same_sample & same_sensor
    if valid is not None:
        v = valid.reshape(-1).to(f.device)
        pair = v[:, None] & v[None, :]
        excluded = excluded | ~pair
        positive = positive & pair
    logits = logits.masked_fill(excluded, float("-inf"))
    rows = positive.any(dim=1)
    per_row = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return per_row[rows].sum() / rows.sum().clamp(min=1)


def variance_covariance_loss(x: Tensor, *, target_std: float = 1.0, eps: float = 1e-4,
                             positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """VICReg's variance and covariance terms over every token of ``x: (..., D)``.

    ``variance = mean_d relu(target_std - sqrt(var_d + eps))`` and ``covariance = sum of the
    squared off-diagonal covariances / D``: zero for spread-out, decorrelated features, large
    when every token is the same vector or features copy each other. With ``positions`` (the
    grid index of each token, ``x.shape[:-1]``) tokens are centred on the mean of their
    position instead of the global mean. Used by ``JEPA`` when
    ``variance_weight`` / ``covariance_weight`` are set (not in the official recipe; the
    anti-collapse regulariser of C-JEPA, Mo & Tong 2024).

    Args:
        x: tokens ``(..., D)``.
        target_std: the standard deviation below which a feature is penalised.
        eps: added to the variance under the square root.
        positions: grid index of each token (None: centre on the global mean).

    Returns:
        ``(variance, covariance)``, float32 scalars.

    Example:
        >>> same = torch.ones(10, 4)
        >>> [round(float(v), 4) for v in variance_covariance_loss(same)]
        [0.99, 0.0]
        >>> spread = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]) * 2
        >>> [round(float(v), 4) for v in variance_covariance_loss(spread)]
        [0.0, 28.4444]
    """
    flat = x.reshape(-1, x.shape[-1]).float()
    if positions is None:
        centred = flat - flat.mean(0)
    else:  # centre each token on the batch mean at its grid position: position alone gives no variance
        index = positions.reshape(-1).to(flat.device)
        centred = flat - position_means(flat, index)[index]
    n, d = flat.shape
    cov = centred.T @ centred / max(n - 1, 1)
    variance = F.relu(target_std - torch.sqrt(cov.diagonal() + eps)).mean()
    off = cov - torch.diag_embed(cov.diagonal())
    return variance, off.pow(2).sum() / d


def position_means(flat: Tensor, index: Tensor) -> Tensor:
    """Mean of the rows of ``flat`` per grid position.

    Args:
        flat: ``(N, D)`` tokens.
        index: ``(N,)`` grid position of each token.

    Returns:
        ``(max(index) + 1, D)``; zero rows for positions without tokens.

    Example:
        >>> position_means(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 2])).tolist()
        [[2.0], [0.0], [5.0]]
    """
    n_pos = int(index.max()) + 1
    sums = flat.new_zeros(n_pos, flat.shape[1]).index_add_(0, index, flat)
    counts = flat.new_zeros(n_pos).index_add_(0, index, torch.ones_like(index, dtype=flat.dtype))
    return sums / counts.clamp(min=1)[:, None]


def position_loss(x: Tensor, positions: Tensor) -> Tensor:
    """How much of ``x`` is explained by the grid position alone.

    The mean squared distance of each position's batch mean from the batch's overall mean, over
    the positions present and the features. Zero when position says nothing about a token.

    Args:
        x: ``(B, N, D)`` tokens.
        positions: ``(B, N)`` grid index of each token.

    Returns:
        A float32 scalar.

    Example:
        >>> positions = torch.tensor([[0, 1], [0, 1]])
        >>> by_position = torch.tensor([[[1.0], [-1.0]], [[1.0], [-1.0]]])  # the same at each position
        >>> float(position_loss(by_position, positions)), float(position_loss(by_position.flip(0), positions))
        (1.0, 1.0)
        >>> float(position_loss(torch.tensor([[[1.0], [-1.0]], [[-1.0], [1.0]]]), positions))
        0.0
    """
    flat = x.reshape(-1, x.shape[-1]).float()
    index = positions.reshape(-1).to(flat.device)
    means = position_means(flat, index)
    present = torch.unique(index)
    return (means[present] - flat.mean(0)).pow(2).mean()


def jepa_loss(predictions: Tensor, targets: Tensor, tokens: Sequence[Tensor], *, tau: float = 0.1,
              beta: float = 1.0, prediction_weight: float = 1.0, contrastive_weight: float = 1.0,
              negatives: str = "all") -> dict[str, Tensor]:
    """``prediction_weight * smooth-L1 + contrastive_weight * MIL-NCE`` (SPEC 5: 1.0 and 1.0).

    Args:
        predictions: predictor outputs ``(n_targets * B, Nt, D)``.
        targets: teacher targets, the same shape.
        tokens: per-sensor patch tokens ``(B, P, D)`` for ``mil_nce_loss``.
        tau: MIL-NCE temperature.
        beta: smooth-L1 threshold (``prediction_loss``).
        prediction_weight: weight of the prediction loss.
        contrastive_weight: weight of the MIL-NCE loss.
        negatives: see ``mil_nce_loss``.

    Returns:
        ``{"loss", "prediction_loss", "contrastive_loss"}``.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two sensors agreeing: MIL-NCE ~ 0
        >>> losses = jepa_loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), [a, a], prediction_weight=2.0)
        >>> {k: round(float(v), 4) for k, v in losses.items()}  # 2 * 0.5 + 1 * 0.0
        {'loss': 1.0, 'prediction_loss': 0.5, 'contrastive_loss': 0.0}
    """
    pred = prediction_loss(predictions, targets, beta=beta)
    contrastive = mil_nce_loss(tokens, tau=tau, negatives=negatives)
    return {"loss": prediction_weight * pred + contrastive_weight * contrastive,
            "prediction_loss": pred, "contrastive_loss": contrastive}
