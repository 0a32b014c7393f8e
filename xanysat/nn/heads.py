"""Task heads on the AnySat encoder, linear probing and fine-tuning (SPEC section 6), pure torch.

- ``ClassificationHead``: class token (or mean / max of the patch tokens) -> LayerNorm ->
  [Linear -> Dropout -> ReLU]* -> Linear; ``task_loss`` gives cross-entropy, or BCE with logits
  for multi-label (TreeSatAI).
- ``SegmentationHead``: per sub-patch ``[patch token, sub-patch token]`` (the encoder's
  ``"dense"`` output, ``2D`` channels) -> LayerNorm -> Linear to ``n_classes * r * r`` ->
  unfolded to an ``r``-times finer pixel map.
- ``TaskModel`` wraps encoder + head; ``linear_probe`` freezes the encoder, ``fine_tune`` trains
  both. A list of patch sizes averages the logits over scales (the multi-scale variant).
- ``add_sensor`` gives the encoder a randomly initialised projector for a new sensor.

Example:
    >>> import torch
    >>> from xanysat import AnySat, AnySatConfig
    >>> from xanysat.testing import synthetic_batch
    >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
    >>> probe = linear_probe(encoder, ClassificationHead(32, 15), patch_size=20)
    >>> probe(synthetic_batch(("s2",), extent_m=60)).shape
    torch.Size([2, 15])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xanysat.nn.encoder import AnySat
from xanysat.nn.projectors import LTAEProjector, VHRProjector
from xanysat.sensors.table import MODALITIES, Modality

__all__ = [
    "ClassificationHead",
    "SegmentationHead",
    "TaskModel",
    "add_sensor",
    "fine_tune",
    "linear_probe",
    "pool_tokens",
    "task_loss",
    "train_only_projectors",
]

Pooling = Literal["token", "avg", "max"]


def pool_tokens(tokens: Tensor, pooling: Pooling = "token") -> Tensor:
    """``(B, 1 + P, D)`` (class token first) -> ``(B, D)``: the class token, or mean / max of patches.

    Args:
        tokens: the encoder's ``"all"`` output.
        pooling: ``"token"``, ``"avg"`` or ``"max"``.

    Returns:
        ``(B, D)``.

    Raises:
        ValueError: an unknown ``pooling``.

    Example:
        >>> tokens = torch.arange(12.0).reshape(1, 3, 4)  # class token [0, 1, 2, 3], then 2 patches
        >>> pool_tokens(tokens).tolist(), pool_tokens(tokens, "avg").tolist(), pool_tokens(tokens, "max").tolist()
        ([[0.0, 1.0, 2.0, 3.0]], [[6.0, 7.0, 8.0, 9.0]], [[8.0, 9.0, 10.0, 11.0]])
        >>> pool_tokens(tokens, "sum")
        Traceback (most recent call last):
            ...
        ValueError: pooling must be 'token', 'avg' or 'max', got 'sum'
    """
    if pooling == "token":
        return tokens[:, 0]
    if pooling == "avg":
        return tokens[:, 1:].mean(dim=1)
    if pooling == "max":
        return tokens[:, 1:].amax(dim=1)
    raise ValueError(f"pooling must be 'token', 'avg' or 'max', got {pooling!r}")


def _mlp(in_dim: int, out_dim: int, hidden: Sequence[int], dropout: float) -> list[nn.Module]:
    dims = (in_dim, *hidden)
    layers: list[nn.Module] = []
    for a, b in pairwise(dims):
        layers += [nn.Linear(a, b), nn.Dropout(dropout), nn.ReLU()]
    return layers + [nn.Linear(dims[-1], out_dim)]


class ClassificationHead(nn.Module):
    """Tile classification: LayerNorm -> (hidden layers) -> Linear (official ``Fine``, pooling 'token').

    Args:
        in_dim: encoder width D.
        n_classes: logits per tile.
        hidden: widths of optional hidden layers (Linear -> Dropout -> ReLU each).
        dropout: dropout of the hidden layers (official 0.2).
        pooling: ``"token"`` (class token), ``"avg"`` or ``"max"`` over the patch tokens.

    Attributes:
        encoder_output: the ``AnySat.forward`` output this head reads (``"all"``).

    Example:
        >>> ClassificationHead(32, 5)(torch.randn(2, 1 + 9, 32)).shape
        torch.Size([2, 5])
    """

    encoder_output = "all"

    def __init__(self, in_dim: int, n_classes: int, *, hidden: Sequence[int] = (), dropout: float = 0.2,
                 pooling: Pooling = "token"):
        super().__init__()
        pool_tokens(torch.zeros(1, 2, 1), pooling)  # validate early
        self.pooling = pooling
        self.head = nn.Sequential(nn.LayerNorm(in_dim), *_mlp(in_dim, n_classes, hidden, dropout))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1 + P, D)`` encoder ``"all"`` output, or already pooled ``(B, D)`` -> ``(B, n_classes)``."""
        if x.ndim == 3:
            x = pool_tokens(x, self.pooling)
        return self.head(x)


class SegmentationHead(nn.Module):
    """Dense head: LayerNorm(F) -> Linear(F -> n_classes * r^2) -> unfold each feature to r x r pixels.

    On the encoder's ``"dense"`` output (F = 2D: patch token and sub-patch token of each
    sub-patch of ``output_modality``) with ``upsample`` r = 1 it predicts one label per
    sub-patch (SPEC 6; r = 10 predicts 0.2 m pixels from FLAIR's 2 m aerial sub-patches, r = 4
    SpaceNet7 Planet). The Linear output channel ``k * r * r + i * r + j`` is class ``k`` at
    pixel ``(i, j)`` of the feature's r x r block (``pixel_shuffle`` order).

    Args:
        in_dim: feature width F (``2 * D`` for ``"dense"``).
        n_classes: classes.
        upsample: r, output pixels per feature side.
        hidden: widths of optional hidden layers (Linear -> ReLU each, as the official dense MLP).

    Attributes:
        encoder_output: ``"dense"``.

    Example:
        >>> SegmentationHead(64, 3, upsample=2)(torch.randn(1, 6, 6, 64)).shape
        torch.Size([1, 3, 12, 12])
    """

    encoder_output = "dense"

    def __init__(self, in_dim: int, n_classes: int, *, upsample: int = 1, hidden: Sequence[int] = ()):
        super().__init__()
        self.n_classes = n_classes
        self.upsample = upsample
        self.head = nn.Sequential(nn.LayerNorm(in_dim), *_mlp(in_dim, n_classes * upsample**2, hidden, 0.0))

    def forward(self, features: Tensor) -> Tensor:
        """``(B, H, W, F)`` channels-last features -> ``(B, n_classes, H * r, W * r)`` logits."""
        x = self.head(features).permute(0, 3, 1, 2)
        return F.pixel_shuffle(x, self.upsample) if self.upsample > 1 else x


class TaskModel(nn.Module):
    """Encoder + head. With ``freeze`` (linear probing) only the head trains.

    A frozen encoder has ``requires_grad_(False)``, stays in eval mode whatever ``train()``
    says (no dropout) and runs without autograd.

    Args:
        encoder: an ``AnySat``.
        head: a module taking the encoder output (``ClassificationHead``, ``SegmentationHead``).
        patch_size: patch side in metres, or several: their logits are averaged (SPEC 6,
            multi-scale variant).
        output: encoder output to feed the head (default ``head.encoder_output``).
        output_modality: sensor of the ``"dense"`` output (default: the first of the batch).
        freeze: linear probing.

    Example:
        >>> from xanysat import AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> task = TaskModel(encoder, ClassificationHead(32, 4), patch_size=[20, 30], freeze=True)
        >>> task(synthetic_batch(("s2",), extent_m=60)).shape  # logits averaged over 20 m and 30 m patches
        torch.Size([2, 4])
        >>> trainable = task.trainable_parameters()
        >>> len(trainable) == len(list(task.head.parameters())), task.train().encoder.training
        (True, False)
    """

    def __init__(self, encoder: AnySat, head: nn.Module, *, patch_size: int | Sequence[int],
                 output: str | None = None, output_modality: str | None = None, freeze: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.patch_sizes = (patch_size,) if isinstance(patch_size, int) else tuple(patch_size)
        if not self.patch_sizes:
            raise ValueError("patch_size is empty; give at least one patch size in metres.")
        self.output = output or getattr(head, "encoder_output", "all")
        self.output_modality = output_modality
        self.freeze = freeze
        if freeze:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that require grad (the head only, when frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def features(self, batch: Mapping[str, Tensor], patch_size: int) -> Tensor:
        """The encoder output the head reads, at one patch size."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.encoder(batch, patch_size, self.output, self.output_modality)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        logits = [self.head(self.features(batch, ps)) for ps in self.patch_sizes]
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)


def linear_probe(encoder: AnySat, head: nn.Module, *, patch_size: int | Sequence[int], **kwargs) -> TaskModel:
    """``TaskModel`` with the encoder frozen (official ``freeze: True``).

    Args:
        encoder: an ``AnySat`` (frozen in place).
        head: the head to train.
        patch_size: patch side(s) in metres.
        kwargs: ``output`` and ``output_modality`` of ``TaskModel``.

    Returns:
        The ``TaskModel``.

    Example:
        >>> from xanysat import AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> probe = linear_probe(encoder, SegmentationHead(64, 3), patch_size=20, output_modality="s2")
        >>> probe(synthetic_batch(("s2",), extent_m=60)).shape  # one label per 10 m sub-patch
        torch.Size([2, 3, 6, 6])
        >>> any(p.requires_grad for p in encoder.parameters())
        False
    """
    return TaskModel(encoder, head, patch_size=patch_size, freeze=True, **kwargs)


def fine_tune(encoder: AnySat, head: nn.Module, *, patch_size: int | Sequence[int], **kwargs) -> TaskModel:
    """``TaskModel`` training encoder and head (official lr 5e-5: ``xanysat.train.schedules.build_optimizer``).

    Args:
        encoder: an ``AnySat``.
        head: the head.
        patch_size: patch side(s) in metres.
        kwargs: ``output`` and ``output_modality`` of ``TaskModel``.

    Returns:
        The ``TaskModel``.

    Example:
        >>> from xanysat import AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> task = fine_tune(encoder, ClassificationHead(32, 4), patch_size=20)
        >>> loss = task_loss(task(synthetic_batch(("s2",), extent_m=60)), torch.tensor([0, 3]))
        >>> loss.backward()
        >>> encoder.cls_token.grad is not None, task.train().encoder.training
        (True, True)
    """
    return TaskModel(encoder, head, patch_size=patch_size, freeze=False, **kwargs)


def task_loss(logits: Tensor, target: Tensor, *, multilabel: bool = False, ignore_index: int = -1) -> Tensor:
    """Cross-entropy (``ignore_index`` labels skipped), or BCE with logits when ``multilabel``.

    Args:
        logits: ``(B, K)`` or ``(B, K, H, W)``.
        target: class ids ``(B,)`` / ``(B, H, W)``, or multi-hot ``(B, K)`` for ``multilabel``.

    Example:
        >>> round(float(task_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), multilabel=True)), 4)
        0.6931
    """
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


@torch.no_grad()
def _init_projector(projector: nn.Module) -> None:
    # as AnySat._init_weights
    for name, p in projector.named_parameters():
        if name.endswith("query"):
            nn.init.trunc_normal_(p, std=0.02)
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)


def add_sensor(model: AnySat, modality: Modality) -> nn.Module:
    """Give ``model`` a randomly initialised projector for a new sensor (SPEC 6, "New sensors").

    The sensor is registered in ``xanysat.MODALITIES`` (the table every part of xanysat reads;
    an identical row may already be there) and appended to ``model.config.sensors``. Train it
    with the rest (``fine_tune``) or alone (``train_only_projectors``, official ``freeze_new``).

    Args:
        model: the encoder, changed in place.
        modality: the sensor's table row (e.g. HLS: L-TAE, 6 bands, 30 m, ``reduce_scale=3``).

    Returns:
        The new projector (``model.projectors[modality.name]``).

    Raises:
        ValueError: the model already has this sensor, or another sensor of that name is known.

    Example:
        >>> from xanysat import AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> projector = add_sensor(encoder, MODALITIES["s1-asc"])  # the sensor table's row: no new sensor
        >>> type(projector).__name__, encoder.config.sensors
        ('LTAEProjector', ('s2', 's1-asc'))
        >>> encoder(synthetic_batch(("s2", "s1-asc"), extent_m=60), 20).shape
        torch.Size([2, 3, 3, 32])
        >>> add_sensor(encoder, MODALITIES["s1-asc"])
        Traceback (most recent call last):
            ...
        ValueError: the model already has a projector for 's1-asc'.
    """
    name = modality.name
    if name in model.projectors:
        raise ValueError(f"the model already has a projector for {name!r}.")
    known = MODALITIES.get(name)
    if known is not None and known != modality:
        raise ValueError(f"{name!r} is already a different sensor in xanysat.MODALITIES; pick another name.")
    MODALITIES[name] = modality
    cfg = model.config
    if modality.time_series:
        projector = LTAEProjector(modality, cfg.embed_dim, cfg.ltae_mlp_in, cfg.ltae_heads, cfg.ltae_key_dim)
    else:
        projector = VHRProjector(modality, cfg.embed_dim, cfg.vhr_mlp_hidden)
    _init_projector(projector)
    reference = model.cls_token
    model.projectors[name] = projector.to(device=reference.device, dtype=reference.dtype)
    model.config = cfg.with_changes(sensors=(*cfg.sensors, name))
    return projector


def train_only_projectors(model: AnySat, sensors: Sequence[str]) -> None:
    """Freeze everything but the projectors of ``sensors`` (official ``freeze_new``).

    The L-TAE missing-value parameter stays frozen (a constant in the release).

    Args:
        model: the encoder, changed in place.
        sensors: the sensors whose projectors train.

    Raises:
        ValueError: the model has no projector for one of ``sensors``.

    Example:
        >>> from xanysat import AnySatConfig
        >>> from xanysat.testing import synthetic_batch
        >>> encoder = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> _ = add_sensor(encoder, MODALITIES["s1-asc"])
        >>> train_only_projectors(encoder, ["s1-asc"])
        >>> sorted({name.split(".")[1] for name, p in encoder.named_parameters() if p.requires_grad})
        ['s1-asc']
        >>> train_only_projectors(encoder, ["naip"])
        Traceback (most recent call last):
            ...
        ValueError: the model has no projector for ['naip']; it has s2, s1-asc.
    """
    missing = [s for s in sensors if s not in model.projectors]
    if missing:
        raise ValueError(f"the model has no projector for {missing}; it has {', '.join(model.projectors)}.")
    model.requires_grad_(False)
    for s in sensors:
        model.projectors[s].requires_grad_(True)
        # the missing-value parameter is a fixed constant in the release
        if isinstance(model.projectors[s], LTAEProjector):
            model.projectors[s].pad_value.requires_grad_(False)
