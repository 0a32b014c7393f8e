"""JEPA pretraining as the official AnySat trains (SPEC section 5), in pure torch.

``JEPA`` puts the pieces together: block masks, temporal dropout and modality masking of the
student's input (``xanysat.train.masks``), the masked student forward (``xanysat.train.student``),
the predictor (``xanysat.train.predictor``), the EMA teacher (``xanysat.train.teacher``), the
latent smooth-L1 and cross-sensor MIL-NCE losses (``xanysat.train.losses``); ``train_step`` runs
one optimizer step. Schedules and the optimizer are in ``xanysat.train.schedules``, the collapse
monitor in ``xanysat.train.monitor``.

Two bugs of the official pretraining code are *not* reproduced (SPEC 9.18-19): every sensor's
context tokens are gathered with stride P, and the predictor gives patch k its own position.

Example:
    >>> from xanysat import AnySat, AnySatConfig
    >>> from xanysat.testing import synthetic_batch
    >>> from xanysat.train.teacher import momentum_at
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
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xanysat.nn.batch import check_batch
from xanysat.nn.encoder import AnySat
from xanysat.train.losses import jepa_loss, position_loss, target_embeddings, variance_covariance_loss
from xanysat.train.masks import BlockMasks, drop_dates, sample_block_masks
from xanysat.train.predictor import Predictor
from xanysat.train.student import encode_context
from xanysat.train.teacher import ema_update

__all__ = ["JEPA", "JEPAConfig", "JEPAOutput", "train_step"]


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

        Returns:
            The losses, predictions, targets and masks (``JEPAOutput``).
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
        >>> from xanysat.train.schedules import build_optimizer
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
