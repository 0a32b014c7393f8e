"""JEPA pretraining as the official AnySat trains (SPEC section 5), in pure torch.

Building blocks for a training loop: I-JEPA multi-block masks on the patch grid, temporal
dropout and modality masking of the student's input, the masked student forward, the
predictor, the EMA teacher, the latent smooth-L1 and cross-sensor MIL-NCE losses, the
momentum / learning-rate / weight-decay schedules as functions of step, and a collapse monitor.

Masks are index tensors (ijepa ``apply_masks``): patch ``k`` of an ``h x w`` grid is
``k = row * w + col``. Randomness comes from an optional ``torch.Generator``.

Two bugs of the official pretraining code are *not* reproduced (SPEC 9.18-19): every sensor's
context tokens are gathered with stride P, and the predictor gives patch k its own position.

Example:
    >>> from xanysat import AnySat, AnySatConfig
    >>> from xanysat.testing import synthetic_batch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "s1")))
    >>> jepa = JEPA(encoder, JEPAConfig(predictor_depth=1, predictor_heads=2))
    >>> batch = synthetic_batch(("s2", "s1"), extent_m=60, batch_size=2)
    >>> out = jepa(batch, 10, generator=torch.Generator().manual_seed(0))
    >>> out.predictions.shape == out.targets.shape, out.loss.ndim
    (True, 0)
    >>> jepa.update_teacher(momentum_at(0, total_steps=1000))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xanysat.nn.batch import BatchLayout, check_batch
from xanysat.nn.encoder import AnySat
from xanysat.nn.layers import Block, CrossBlock, init_linears, irpe_buckets, sincos_2d
from xanysat.sensors.table import MODALITIES

__all__ = [
    "JEPA",
    "BlockMasks",
    "JEPAConfig",
    "JEPAOutput",
    "Predictor",
    "apply_modality_mask",
    "build_optimizer",
    "collapse_stats",
    "cosine_schedule",
    "drop_dates",
    "effective_rank",
    "ema_update",
    "embedding_std",
    "encode_context",
    "gather_patches",
    "jepa_loss",
    "lr_at",
    "mil_nce_loss",
    "momentum_at",
    "plateau_scheduler",
    "prediction_loss",
    "sample_block_masks",
    "sample_modality_mask",
    "set_hyperparameters",
    "target_embeddings",
    "variance_covariance_loss",
    "position_loss",
    "position_means",
    "train_step",
    "weight_decay_at",
]


@dataclass(frozen=True)
class JEPAConfig:
    """Every number of the official pretraining (SPEC section 5 unless noted).

    Attributes:
        n_targets: target blocks per sample.
        target_scale: fraction of the grid one target block covers.
        target_aspect: height / width of a target block.
        context_scale: fraction of the grid the (square) context block covers.
        min_keep: a block is accepted when it holds *more* than this many patches (official
            ``MaskCollator(min_keep=0)`` in ``module_JEPA``; SPEC does not give it).
        allow_overlap: keep target patches in the context (official: False).
        date_drop_ratio: fraction of each time series' dates the student does not see.
        modality_mask_ratio: fraction of the non-guaranteed context tokens replaced by the
            learned mask token.
        predictor_depth, predictor_heads, predictor_mlp_ratio: predictor transformer.
        predictor_dim: predictor width (official: the encoder's ``embed_dim``; None = that).
        tau: MIL-NCE temperature.
        smooth_l1_beta: Huber threshold of the prediction loss.
        prediction_weight, contrastive_weight: loss mix.
        target_norm: ``"layer"`` (official: LayerNorm over features), ``"layer+batch"`` (then
            each feature standardised over the batch's patches) or ``"layer+position"`` (centred
            on the batch mean at each grid position first); see ``target_embeddings``.
        contrastive_negatives: ``"all"`` (official) or ``"other-sensors"`` (see ``mil_nce_loss``).
        variance_weight, covariance_weight: VICReg terms on the student's context outputs
            (``variance_covariance_loss``; official: 0).
        variance_per_position: centre those tokens per grid position (content, not position,
            must vary).
        position_weight: weight of ``position_loss`` on the student's context outputs (how much
            of them the grid position alone explains; official: 0).
        ema_start, ema_end: teacher momentum, linear over all training steps.
        lr, weight_decay: AdamW.

    Example:
        >>> import dataclasses
        >>> config = JEPAConfig(predictor_depth=1, predictor_heads=2)
        >>> config.n_targets, config.lr, config.weight_decay, config.predictor_dim is None
        (4, 5e-05, 0.05, True)
        >>> dataclasses.replace(config, tau=0.2).tau  # frozen: change a copy
        0.2
    """

    n_targets: int = 4
    target_scale: tuple[float, float] = (0.2, 0.8)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 0
    allow_overlap: bool = False
    date_drop_ratio: float = 0.5
    modality_mask_ratio: float = 0.5
    predictor_depth: int = 4
    predictor_heads: int = 16
    predictor_mlp_ratio: float = 4.0
    predictor_dim: int | None = None
    tau: float = 0.1
    smooth_l1_beta: float = 1.0
    prediction_weight: float = 1.0
    contrastive_weight: float = 1.0
    target_norm: str = "layer"
    contrastive_negatives: str = "all"
    variance_weight: float = 0.0
    covariance_weight: float = 0.0
    variance_per_position: bool = False
    position_weight: float = 0.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    lr: float = 5e-5
    weight_decay: float = 0.05


# -- masks ------------------------------------------------------------------------------------


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


# -- masked student forward -------------------------------------------------------------------


def sensor_tokens(model: AnySat, batch: Mapping[str, Tensor], layout: BatchLayout
                  ) -> tuple[dict[str, Tensor], list[Tensor]]:
    """Patch-encoder outputs before any position embedding or masking.

    Args:
        model: the encoder.
        batch: as ``AnySat.forward``.
        layout: ``check_batch(batch, patch_size, tuple(model.projectors))``.

    Returns:
        ``{sensor: (B, P, D)}`` for patch-level sensors, and the ``(B, 1, D)`` tokens of
        tile-token sensors (MODIS).

    Example:
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.nn.batch import check_batch
        >>> from xanysat.testing import synthetic_batch
        >>> config = AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "modis"))
        >>> model = AnySat(config)
        >>> batch = synthetic_batch(("s2", "modis"), extent_m=60, batch_size=2)
        >>> layout = check_batch(batch, 20, tuple(model.projectors))  # 60 m / 20 m: a 3 x 3 grid
        >>> patches, tiles = sensor_tokens(model, batch, layout)
        >>> {k: tuple(v.shape) for k, v in patches.items()}, [tuple(t.shape) for t in tiles]
        ({'s2': (2, 9, 32)}, [(2, 1, 32)])
    """
    B, D = layout.batch_size, model.config.embed_dim
    patches, tiles = {}, []
    for name in layout.sensors:
        cls, _ = model.patch_encoder(model._project(name, batch, layout), MODALITIES[name].token_m)
        if MODALITIES[name].tile_token:
            tiles.append(cls.view(B, 1, D))
        else:
            patches[name] = cls.view(B, -1, D)
    return patches, tiles


def _context_buckets(grid: tuple[int, int], n_prefix: int, context: Tensor, n_modalities: int) -> Tensor:
    """iRPE buckets ``(B, Lq, Lk)`` between the context positions (their true grid distances)."""
    full = irpe_buckets(grid[0], grid[1], n_prefix, context.device)
    prefix = torch.arange(n_prefix, device=context.device).expand(context.shape[0], -1)
    rows = torch.cat([prefix, context + n_prefix], dim=1)
    cols = torch.cat([prefix, (context + n_prefix).repeat(1, n_modalities)], dim=1)
    return full[rows[:, :, None], cols[:, None, :]]


def _cross_block(block: CrossBlock, x: Tensor, query_pos: Tensor, buckets: Tensor) -> Tensor:
    """``CrossBlock`` with per-sample query positions ``(B, Lq, D)`` and buckets ``(B, Lq, Lk)``."""
    attn = block.attn
    y = block.norm1(x)
    B, N, C = y.shape
    q = (attn.query + query_pos).view(B, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.wk(y).view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)
    v = attn.wv(y).view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)
    table = q[:, :1] @ attn.rpe_weight[0]  # un-scaled query, first head, as released
    bias = torch.gather(table, -1, buckets[:, None])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    y = attn.proj(out.transpose(1, 2).reshape(B, -1, C))
    return y + block.mlp(block.norm2(y))


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
    patches, tiles = sensor_tokens(model, batch, layout)
    B, D = layout.batch_size, model.config.embed_dim
    context = context.to(model.cls_token.device)
    pos = sincos_2d(D, *layout.grid, layout.scale, like=model.cls_token)
    x = torch.cat([gather_patches(t + pos.to(t.dtype), context) for t in patches.values()], dim=1)
    if mask_token is not None and modality_mask_ratio > 0:
        keep = sample_modality_mask(B, len(patches), context.shape[1], ratio=modality_mask_ratio, generator=generator)
        x = apply_modality_mask(x, keep, mask_token)
    n_prefix = 1 + len(tiles)
    x = torch.cat([model.cls_token.expand(B, -1, -1).to(x.dtype), *tiles, x], dim=1)
    for block in model.combiner.blocks:
        x = block(x)
    query_pos = torch.cat([pos.new_zeros(B, n_prefix, D), pos[context]], dim=1).to(x.dtype)
    x = _cross_block(model.combiner.cross, x, query_pos, _context_buckets(layout.grid, n_prefix, context, len(patches)))
    return torch.cat([x[:, :1], x[:, n_prefix:]], dim=1), patches


# -- predictor --------------------------------------------------------------------------------


class Predictor(nn.Module):
    """Narrow transformer predicting target-patch embeddings from context tokens (SPEC 5).

    Context tokens are embedded (Linear) and get their patch position embedding; for every
    target block, one mask token per target patch gets that patch's position embedding; a
    class token is prepended; blocks, LayerNorm, Linear back to the encoder width. The
    position embedding is the combiner's (2-D sin-cos, coordinates x scale).

    Args:
        embed_dim: encoder width E.
        dim: predictor width (None: E, as the release, whose blocks only work then).
        depth, num_heads, mlp_ratio: transformer.

    Example:
        >>> p = Predictor(32, depth=1, num_heads=2)
        >>> ctx, tgt = torch.tensor([[0, 1, 2]]), torch.tensor([[[5, 6]], [[7, 8]]])
        >>> p(torch.randn(1, 3, 32), ctx, tgt, grid=(3, 3), scale=1).shape
        torch.Size([2, 2, 32])
    """

    def __init__(self, embed_dim: int, *, dim: int | None = None, depth: int = 4, num_heads: int = 16,
                 mlp_ratio: float = 4.0):
        super().__init__()
        dim = dim or embed_dim
        self.dim = dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, eps=1e-5) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.proj = nn.Linear(dim, embed_dim)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # as the release: trunc-normal 0.02 linears, zero biases, residual branches / sqrt(2 * layer)
        init_linears(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for i, block in enumerate(self.blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * i))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def forward(self, x: Tensor, context: Tensor, targets: Tensor, grid: tuple[int, int], scale: int) -> Tensor:
        """Predict the target blocks.

        Args:
            x: context outputs of the student ``(B, Nc, E)`` (class token removed).
            context: ``(B, Nc)`` their patch indices.
            targets: ``(n_targets, B, Nt)`` target patch indices.
            grid: ``(h, w)`` patch grid.
            scale: patch side in 10 m units.

        Returns:
            ``(n_targets * B, Nt, E)``, block-major (block 0 for every sample, then block 1, ...).
        """
        n_t, B, n_tgt = targets.shape
        n_ctx = context.shape[1]
        pos = sincos_2d(self.dim, grid[0], grid[1], scale, like=x)
        x = (self.embed(x) + pos[context]).repeat(n_t, 1, 1)
        queries = self.mask_token.to(x.dtype) + pos[targets.reshape(n_t * B, n_tgt)]
        x = torch.cat([self.cls_token.expand(n_t * B, -1, -1).to(x.dtype), x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x)[:, 1 + n_ctx:])


# -- losses -----------------------------------------------------------------------------------


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
    """Mean of the rows of ``flat (N, D)`` per grid position ``index (N,)``: ``(max(index) + 1, D)``.

    Example:
        >>> position_means(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 2])).tolist()
        [[2.0], [0.0], [5.0]]
    """
    n_pos = int(index.max()) + 1
    sums = flat.new_zeros(n_pos, flat.shape[1]).index_add_(0, index, flat)
    counts = flat.new_zeros(n_pos).index_add_(0, index, torch.ones_like(index, dtype=flat.dtype))
    return sums / counts.clamp(min=1)[:, None]


def position_loss(x: Tensor, positions: Tensor) -> Tensor:
    """How much of ``x (B, N, D)`` is explained by the grid position alone: the mean squared
    distance of each position's batch mean from the batch's overall mean, over the positions
    present and the features. Zero when position says nothing about a token.

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


# -- student / teacher ------------------------------------------------------------------------


@dataclass
class JEPAOutput:
    """What one JEPA forward gives; ``loss`` is what to back-propagate.

    Attributes:
        loss: ``prediction_weight * prediction_loss + contrastive_weight * contrastive_loss``.
        prediction_loss: smooth-L1 between predictions and targets.
        contrastive_loss: cross-sensor MIL-NCE (zero with one sensor).
        predictions: ``(n_targets * B, Nt, D)`` predictor outputs, block-major.
        targets: ``(n_targets * B, Nt, D)`` teacher targets (no gradient).
        masks: the ``BlockMasks`` drawn for this forward.

    Example:
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> jepa = JEPA(encoder, JEPAConfig(predictor_depth=1, predictor_heads=2))
        >>> out = jepa(synthetic_batch(("s2",), extent_m=60), 20, generator=torch.Generator().manual_seed(0))
        >>> n_targets, B, n_t = out.masks.targets.shape
        >>> tuple(out.predictions.shape) == tuple(out.targets.shape) == (n_targets * B, n_t, 32)
        True
        >>> out.contrastive_loss.item() == 0.0, torch.allclose(out.loss, out.prediction_loss)  # one sensor
        (True, True)
    """

    loss: Tensor
    prediction_loss: Tensor
    contrastive_loss: Tensor
    predictions: Tensor
    targets: Tensor
    masks: BlockMasks


class JEPA(nn.Module):
    """Student encoder + predictor + learned mask token, and an EMA teacher (SPEC 5).

    The teacher is a deep copy of the student without gradients, kept in eval mode (no
    dropout in its targets), updated only by ``update_teacher``.

    Args:
        encoder: the student ``AnySat``.
        config: ``JEPAConfig`` (None: the official settings).

    Example:
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> jepa = JEPA(encoder, JEPAConfig(predictor_depth=1, predictor_heads=2)).train()
        >>> jepa.student is encoder, jepa.teacher.training, any(p.requires_grad for p in jepa.teacher.parameters())
        (True, False, False)
        >>> trainable = {id(p) for p in jepa.trainable_parameters()}  # student + predictor + mask token
        >>> id(jepa.mask_token) in trainable, trainable.isdisjoint(id(p) for p in jepa.teacher.parameters())
        (True, True)
        >>> out = jepa(synthetic_batch(("s2",), extent_m=60), 20, generator=torch.Generator().manual_seed(0))
        >>> out.loss.requires_grad, out.targets.requires_grad
        (True, False)
    """

    def __init__(self, encoder: AnySat, config: JEPAConfig | None = None):
        super().__init__()
        self.config = cfg = config or JEPAConfig()
        D = encoder.config.embed_dim
        self.student = encoder
        self.predictor = Predictor(D, dim=cfg.predictor_dim, depth=cfg.predictor_depth,
                                   num_heads=cfg.predictor_heads, mlp_ratio=cfg.predictor_mlp_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.teacher = copy.deepcopy(encoder).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> JEPA:
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student, predictor and mask token parameters that require grad (not the teacher)."""
        modules = (self.student, self.predictor)
        return [p for m in modules for p in m.parameters() if p.requires_grad] + [self.mask_token]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student``."""
        ema_update(self.teacher, self.student, momentum)

    def forward(self, batch: Mapping[str, Tensor], patch_size: int, *,
                generator: torch.Generator | None = None) -> JEPAOutput:
        """One JEPA forward on a batch (official ``ModuleMulti.forward`` + loss).

        The teacher sees the full input; the student sees a date-dropped input, the context
        block, and modality masking; the predictor predicts the teacher's (layer-normed)
        target-block embeddings.

        Args:
            batch, patch_size: as ``AnySat.forward``.
            generator: random source of every mask (None: torch's global one).
        """
        cfg = self.config
        layout = check_batch(batch, patch_size, tuple(self.student.projectors))
        masks = sample_block_masks(
            layout.batch_size, layout.grid, generator=generator, n_targets=cfg.n_targets,
            target_scale=cfg.target_scale, target_aspect=cfg.target_aspect, context_scale=cfg.context_scale,
            min_keep=cfg.min_keep, allow_overlap=cfg.allow_overlap,
        )
        device = self.mask_token.device
        masks = BlockMasks(masks.context.to(device), masks.targets.to(device))
        with torch.no_grad():
            targets = target_embeddings(self.teacher(batch, patch_size, "all")[:, 1:], masks.targets,
                                        norm=cfg.target_norm)
        student_batch = batch
        if cfg.date_drop_ratio > 0:
            student_batch = drop_dates(batch, ratio=cfg.date_drop_ratio, generator=generator)
        context, tokens = encode_context(
            self.student, student_batch, patch_size, masks.context, mask_token=self.mask_token,
            modality_mask_ratio=cfg.modality_mask_ratio, generator=generator,
        )
        predictions = self.predictor(context[:, 1:], masks.context, masks.targets, layout.grid, layout.scale)
        losses = jepa_loss(predictions, targets.to(predictions.dtype), list(tokens.values()), tau=cfg.tau,
                           beta=cfg.smooth_l1_beta, prediction_weight=cfg.prediction_weight,
                           contrastive_weight=cfg.contrastive_weight, negatives=cfg.contrastive_negatives)
        loss = losses["loss"]
        if cfg.variance_weight or cfg.covariance_weight:
            variance, covariance = variance_covariance_loss(
                context[:, 1:], positions=masks.context if cfg.variance_per_position else None)
            loss = loss + cfg.variance_weight * variance + cfg.covariance_weight * covariance
        if cfg.position_weight:
            loss = loss + cfg.position_weight * position_loss(context[:, 1:], masks.context)
        return JEPAOutput(loss, losses["prediction_loss"], losses["contrastive_loss"], predictions, targets, masks)


def train_step(jepa: JEPA, batch: Mapping[str, Tensor], patch_size: int, optimizer: torch.optim.Optimizer, *,
               momentum: float, generator: torch.Generator | None = None) -> JEPAOutput:
    """forward, backward, EMA, optimizer step.

    The EMA runs right after the backward, before the optimizer step, like the release's
    ``on_after_backward`` (SPEC 5: "applied after every backward").

    Args:
        jepa: the model.
        batch: as ``AnySat.forward``.
        patch_size: patch side in metres.
        optimizer: over ``jepa.trainable_parameters()`` (``build_optimizer``).
        momentum: teacher EMA momentum of this step (``momentum_at``).
        generator: random source of every mask (None: torch's global one).

    Returns:
        The ``JEPAOutput`` of the forward.

    Example:
        >>> from xanysat import AnySat, AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig.tiny().with_changes(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> jepa = JEPA(encoder, JEPAConfig(predictor_depth=1, predictor_heads=2))
        >>> optimizer = build_optimizer(jepa, lr=1e-3)
        >>> before = next(jepa.student.parameters()).detach().clone()
        >>> out = train_step(jepa, synthetic_batch(("s2",), extent_m=60), 20, optimizer, momentum=0.5,
        ...                  generator=torch.Generator().manual_seed(0))
        >>> # the EMA saw the student before the step (teacher == student then): the teacher is unchanged
        >>> torch.equal(next(jepa.teacher.parameters()), before), torch.equal(next(jepa.student.parameters()), before)
        (True, False)
    """
    optimizer.zero_grad(set_to_none=True)
    out = jepa(batch, patch_size, generator=generator)
    out.loss.backward()
    jepa.update_teacher(momentum)
    optimizer.step()
    return out


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t = momentum * t + (1 - momentum) * s`` for every parameter pair (``torch._foreach_*``).

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


# -- schedules (functions of step) -------------------------------------------------------------


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


def momentum_at(step: int, total_steps: int, *, start: float = 0.996, end: float = 1.0,
                shape: Literal["linear", "cosine"] = "linear") -> float:
    """Teacher momentum at ``step`` (SPEC 5: linear 0.996 -> 1.0 over ``ipe * epochs`` steps).

    The release's generator yields ``start + i * (end - start) / total`` for the i-th backward
    (i from 0); after ``total_steps`` this stays at ``end``.

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


def lr_at(step: int, *, base_lr: float = 5e-5, warmup_steps: int = 0, total_steps: int | None = None,
          final_lr: float | None = None) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine to ``final_lr``.

    The defaults are the official setting: a constant 5e-5 (SPEC 5), lowered only by
    ``plateau_scheduler`` on the validation loss, which is not a function of step.

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


# -- collapse monitor --------------------------------------------------------------------------


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
