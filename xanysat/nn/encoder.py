"""The AnySat encoder: projectors -> patch encoder -> modality combiner.

Pure torch; the batch layout and outputs are those of the official release (SPEC sections 1-4):
modality tensors ``aerial: (B, C, H, W)``, ``s2: (B, T, C, H, W)`` with ``s2_dates: (B, T)``,
optional ``<name>_mask``; outputs are channels last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from xanysat.nn.batch import BatchLayout, check_batch
from xanysat.nn.card import ModelCard
from xanysat.nn.layers import Block, CrossBlock, init_linears, sincos_2d
from xanysat.nn.projectors import LTAEProjector, VHRProjector
from xanysat.sensors.table import MODALITIES, Modality

Output = Literal["tile", "patch", "all", "dense"]
ALL_SENSORS: tuple[str, ...] = tuple(MODALITIES)


@dataclass(frozen=True)
class AnySatConfig:
    """Architecture of an AnySat encoder.

    Attributes:
        embed_dim: token width D of every stage.
        depth: blocks of the patch encoder and self-attention blocks of the combiner.
        num_heads: attention heads of both transformers.
        mlp_ratio: hidden width of transformer MLPs, as a multiple of ``embed_dim``.
        sensors: sensors that get a projector.
        ltae_mlp_in: widths of the L-TAE input MLP (default ``D/8, D/2, D, 2D, D``).
        ltae_heads: L-TAE attention heads (the master queries).
        ltae_key_dim: L-TAE key width per head.
        vhr_mlp_hidden: hidden width of the conv projectors' MLP (default ``2D``).
        official_flash_attention: reproduce the release's ``flash_attn=True`` combiner attention,
            which attends across heads instead of tokens (SPEC 9.3). For comparison only.

    Example:
        >>> AnySatConfig.base().embed_dim
        768
        >>> AnySatConfig.tiny(sensors=("s2",)).sensors
        ('s2',)
    """

    embed_dim: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_ratio: float = 4.0
    sensors: tuple[str, ...] = ALL_SENSORS
    ltae_mlp_in: tuple[int, ...] | None = None
    ltae_heads: int = 16
    ltae_key_dim: int = 8
    vhr_mlp_hidden: int | None = None
    official_flash_attention: bool = False

    def __post_init__(self) -> None:
        from xanysat.sensors.table import get_modality

        for name in self.sensors:
            get_modality(name)
        if self.embed_dim % self.num_heads or self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads} and 4")
        d = self.embed_dim
        if self.ltae_mlp_in is None:
            object.__setattr__(self, "ltae_mlp_in", (d // 8, d // 2, d, 2 * d, d))
        if self.vhr_mlp_hidden is None:
            object.__setattr__(self, "vhr_mlp_hidden", 2 * d)
        object.__setattr__(self, "sensors", tuple(self.sensors))
        object.__setattr__(self, "ltae_mlp_in", tuple(self.ltae_mlp_in))

    @classmethod
    def tiny(cls, **kwargs) -> AnySatConfig:
        """hubconf 'tiny': D 256, depth 2, 4 heads."""
        return cls(embed_dim=256, depth=2, num_heads=4, **kwargs)

    @classmethod
    def small(cls, **kwargs) -> AnySatConfig:
        """hubconf 'small': D 512, depth 4, 8 heads."""
        return cls(embed_dim=512, depth=4, num_heads=8, **kwargs)

    @classmethod
    def base(cls, **kwargs) -> AnySatConfig:
        """The released model: D 768, depth 6, 12 heads."""
        return cls(**kwargs)

    def with_changes(self, **kwargs) -> AnySatConfig:
        return replace(self, **kwargs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> AnySatConfig:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


class PatchEncoder(nn.Module):
    """Scale-adaptive transformer over the sub-patch tokens of each patch.

    A class token is prepended, sub-patch positions get a sin-cos embedding in metres (so
    one encoder serves every ground sampling distance), blocks use iRPE on the sub-patch
    grid; the class token becomes the patch token.

    Args:
        cfg: the architecture (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``).

    Example:
        >>> import torch
        >>> enc = PatchEncoder(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> with torch.no_grad():
        ...     patch, sub = enc(torch.randn(5, 4, 32), spacing_m=10.0)  # 5 patches of 2 x 2 tokens
        >>> patch.shape, sub.shape
        (torch.Size([5, 32]), torch.Size([5, 4, 32]))
    """

    def __init__(self, cfg: AnySatConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, eps=1e-5, irpe=True) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-5)

    chunk_tokens = 16384

    def forward(self, tokens: Tensor, spacing_m: float) -> tuple[Tensor, Tensor]:
        """``tokens: (N, S, D)`` on a square sub-patch grid -> ``(N, D)`` patch and ``(N, S, D)`` sub-patch tokens.

        Patches run in chunks of about ``chunk_tokens`` tokens to bound memory.
        """
        step = max(1, self.chunk_tokens // (tokens.shape[1] + 1))
        if tokens.shape[0] <= step:
            return self._encode(tokens, spacing_m)
        parts = [self._encode(tokens[i:i + step], spacing_m) for i in range(0, tokens.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _encode(self, tokens: Tensor, spacing_m: float) -> tuple[Tensor, Tensor]:
        N, S, D = tokens.shape
        side = round(S**0.5)
        pos = sincos_2d(D, side, side, spacing_m, like=tokens)
        x = torch.cat([self.cls_token.expand(N, -1, -1).to(tokens.dtype), tokens + pos], dim=1)
        for block in self.blocks:
            x = block(x, (side, side))
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


class Combiner(nn.Module):
    """Self-attention over all sensors' patch tokens, then one learned query per patch.

    ``forward(x, query_pos, grid, n_prefix)`` takes ``x: (B, n_prefix + M * h*w, D)`` (the
    class token and any tile tokens first, then the patch tokens of each of M sensors),
    ``query_pos: (n_prefix + h*w, D)`` and the patch ``grid`` ``(h, w)``; it returns
    ``(B, n_prefix + h*w, D)``. With ``positions`` ``(B, K)``, each sensor block holds only the
    K patches at those grid indices, and there are ``n_prefix + K`` outputs.

    Args:
        cfg: the architecture (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
            ``official_flash_attention``).

    Example:
        >>> import torch
        >>> from xanysat.nn.layers import sincos_2d
        >>> combiner = Combiner(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> x = torch.randn(2, 1 + 2 * 3, 32)  # class token + a 2 x 3 patch grid
        >>> pos = sincos_2d(32, 2, 3, 10, like=x)
        >>> with torch.no_grad():
        ...     out = combiner(x, torch.cat([pos.new_zeros(1, 32), pos]), (2, 3), n_prefix=1)
        >>> out.shape
        torch.Size([2, 7, 32])
    """

    def __init__(self, cfg: AnySatConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, eps=1e-6, heads_as_tokens=cfg.official_flash_attention)
            for _ in range(cfg.depth)
        )
        self.cross = CrossBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, eps=1e-6)

    def forward(self, x: Tensor, query_pos: Tensor, grid: tuple[int, int], n_prefix: int,
                positions: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.cross(x, query_pos, grid, n_prefix, positions)


class SensorTokens(NamedTuple):
    """Patch-encoder outputs of a batch, before any position embedding (``AnySat.sensor_tokens``).

    Attributes:
        patches: sensor -> ``(B, h*w, D)`` patch tokens, for the patch-level sensors in batch order.
        tiles: sensor -> ``(B, 1, D)`` tokens of the tile-token sensors (MODIS), in batch order.
        sub_patches: ``(B*h*w, S, D)`` sub-patch tokens of ``layout.output_modality`` (a
            ``"dense"`` output), else None.

    Example:
        >>> import torch
        >>> tokens = SensorTokens({"s2": torch.zeros(2, 9, 8)}, {}, None)
        >>> list(tokens.patches), tokens.sub_patches is None
        (['s2'], True)
    """

    patches: dict[str, Tensor]
    tiles: dict[str, Tensor]
    sub_patches: Tensor | None


class AnySat(nn.Module):
    """AnySat encoder for any mix of the sensors in ``xanysat.MODALITIES``.

    Args:
        config: the architecture; ``AnySatConfig.base()`` is the released model.

    Example:
        >>> import torch, xanysat
        >>> model = xanysat.AnySat(xanysat.AnySatConfig(embed_dim=32, depth=1, num_heads=2)).eval()
        >>> batch = {"s2": torch.randn(1, 3, 10, 6, 6), "s2_dates": torch.tensor([[10, 120, 250]])}
        >>> model(batch, patch_size=20).shape
        torch.Size([1, 3, 3, 32])
    """

    def __init__(self, config: AnySatConfig | None = None):
        super().__init__()
        self.config = config or AnySatConfig.base()
        cfg = self.config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.projectors = nn.ModuleDict({name: self._projector(MODALITIES[name]) for name in cfg.sensors})
        self.patch_encoder = PatchEncoder(cfg)
        self.combiner = Combiner(cfg)
        self.card = ModelCard(f"anysat-{cfg.embed_dim}d{cfg.depth}-untrained")
        """Identity, training statistics and tile size (``xanysat.nn.card.ModelCard``)."""
        self._init_weights()

    def _projector(self, modality: Modality) -> nn.Module:
        cfg = self.config
        if modality.time_series:
            return LTAEProjector(modality, cfg.embed_dim, cfg.ltae_mlp_in, cfg.ltae_heads, cfg.ltae_key_dim)
        return VHRProjector(modality, cfg.embed_dim, cfg.vhr_mlp_hidden)

    @torch.no_grad()
    def _init_weights(self) -> None:
        init_linears(self)
        for name, p in self.named_parameters():
            if name.endswith(("cls_token", "rpe_weight", ".query")):
                nn.init.trunc_normal_(p, std=0.02)

    def forward(self, batch: dict[str, Tensor], patch_size: int, output: Output = "patch",
                output_modality: str | None = None, *, dense_layout: Literal["raster", "official"] = "raster",
                ) -> Tensor:
        """Embed a batch of tiles.

        Args:
            batch: sensor tensors ``(B, C, H, W)`` or ``(B, T, C, H, W)``, ``<name>_dates``
                ``(B, T)`` (day of year) for time series, optional ``<name>_mask`` (True =
                valid) shaped like the data or ``(B, T)`` for whole dates.
            patch_size: patch side in metres, a multiple of 10 dividing the tile.
            output: ``"tile"`` ``(B, D)``; ``"patch"`` ``(B, h, w, D)``; ``"all"``
                ``(B, 1 + h*w, D)``; ``"dense"`` ``(B, H', W', 2D)`` per sub-patch of
                ``output_modality`` (default the first sensor): ``[patch token, sub-patch token]``.
            dense_layout: ``"raster"`` places every sub-patch where it is on the ground;
                ``"official"`` reproduces the release's scrambled layout for 0.2 m sensors at
                patch >= 20 m (SPEC 9.2).

        Returns:
            The embedding tensor, channels last.
        """
        if dense_layout not in ("raster", "official"):
            raise ValueError(f"dense_layout must be 'raster' or 'official', got {dense_layout!r}")
        layout = check_batch(batch, patch_size, tuple(self.projectors), output, output_modality)
        return self._forward(batch, layout, output, dense_layout)

    def _forward(self, batch: dict[str, Tensor], layout: BatchLayout, output: Output, dense_layout: str) -> Tensor:
        B, D = layout.batch_size, self.config.embed_dim
        h, w = layout.grid
        tokens = self.sensor_tokens(batch, layout)
        tiles = list(tokens.tiles.values())
        if tokens.patches:
            patches = self.embed_positions(list(tokens.patches.values()), layout.grid, layout.scale)
        else:
            patches = tiles[0].new_zeros(B, 0, D)
        x = self.combine(patches, tiles, layout.grid, layout.scale)
        if output == "tile":
            return x[:, 0]
        if output == "all":
            return x
        if output == "patch":
            return x[:, 1:].reshape(B, h, w, D)
        return self._dense(x[:, 1:], tokens.sub_patches, layout, dense_layout)

    def sensor_tokens(self, batch: dict[str, Tensor], layout: BatchLayout) -> SensorTokens:
        """Projectors and patch encoder of every sensor of a batch: the tokens the combiner fuses.

        Args:
            batch: as ``forward``.
            layout: ``check_batch(batch, patch_size, tuple(self.projectors))``.

        Returns:
            ``SensorTokens``: patch tokens per patch-level sensor, tile tokens per tile-token
            sensor, and the sub-patch tokens of ``layout.output_modality`` when it is set.

        Example:
            >>> from xanysat.nn.batch import check_batch
            >>> from xanysat.testing import synthetic_batch
            >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "modis")))
            >>> batch = synthetic_batch(("s2", "modis"), extent_m=60, batch_size=2)
            >>> layout = check_batch(batch, 20, tuple(model.projectors))  # 60 m / 20 m: a 3 x 3 grid
            >>> tokens = model.sensor_tokens(batch, layout)
            >>> {k: tuple(v.shape) for k, v in tokens.patches.items()}, {k: tuple(v.shape) for k, v in tokens.tiles.items()}
            ({'s2': (2, 9, 32)}, {'modis': (2, 1, 32)})
        """
        B, D = layout.batch_size, self.config.embed_dim
        patches, tiles, sub_patches = {}, {}, None
        for name in layout.sensors:
            modality = MODALITIES[name]
            cls, sub = self.patch_encoder(self._project(name, batch, layout), modality.token_m)
            if modality.tile_token:
                tiles[name] = cls.view(B, 1, D)
                continue
            patches[name] = cls.view(B, -1, D)
            if name == layout.output_modality:
                sub_patches = sub
        return SensorTokens(patches, tiles, sub_patches)

    def position_embedding(self, grid: tuple[int, int], scale: int) -> Tensor:
        """The combiner's patch position embedding: 2-D sin-cos of the grid, coordinates x ``scale``.

        Args:
            grid: ``(h, w)`` patches.
            scale: patch side in 10 m units.

        Returns:
            ``(h*w, D)`` like ``cls_token`` (row-major), ``(0, D)`` for an empty grid.

        Example:
            >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
            >>> model.position_embedding((2, 3), 2).shape, model.position_embedding((0, 0), 2).shape
            (torch.Size([6, 32]), torch.Size([0, 32]))
        """
        D = self.config.embed_dim
        h, w = grid
        return sincos_2d(D, h, w, scale, like=self.cls_token) if h * w else self.cls_token.new_zeros(0, D)

    def embed_positions(self, patches: Sequence[Tensor], grid: tuple[int, int], scale: int,
                        positions: Tensor | None = None) -> Tensor:
        """Add the position embedding to each sensor's patch tokens; concatenate them sensor-major.

        Args:
            patches: M tensors ``(B, h*w, D)``, the values of ``SensorTokens.patches``.
            grid: ``(h, w)`` patches.
            scale: patch side in 10 m units.
            positions: ``(B, K)`` grid indices to keep of every sensor, per sample (None: all).

        Returns:
            ``(B, M * K, D)``: sensor 0's K tokens, then sensor 1's, ...

        Example:
            >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
            >>> s2, s1 = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
            >>> everything = model.embed_positions([s2, s1], (2, 3), 1)
            >>> some = model.embed_positions([s2, s1], (2, 3), 1, positions=torch.tensor([[4], [0]]))
            >>> everything.shape, some.shape, torch.equal(some[0, 1], everything[0, 6 + 4])
            (torch.Size([2, 12, 32]), torch.Size([2, 2, 32]), True)
        """
        pos = self.position_embedding(grid, scale)
        if positions is None:
            return torch.cat([t + pos.to(t.dtype) for t in patches], dim=1)
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        return torch.cat([(t + pos.to(t.dtype))[rows, positions] for t in patches], dim=1)

    def combine(self, patches: Tensor, tiles: Sequence[Tensor], grid: tuple[int, int], scale: int,
                positions: Tensor | None = None) -> Tensor:
        """The modality combiner on given tokens: class token and tile tokens prepended, tile tokens dropped after.

        Args:
            patches: ``(B, M * K, D)`` position-embedded patch tokens, sensor-major
                (``embed_positions``).
            tiles: ``(B, 1, D)`` tile tokens (MODIS).
            grid: ``(h, w)`` patches.
            scale: patch side in 10 m units.
            positions: ``(B, K)`` grid index of each sensor's K tokens, per sample (None: all
                ``h*w`` patches in order, the ``forward`` case).

        Returns:
            ``(B, 1 + K, D)``: the class token, then one token per position.

        Example:
            >>> from xanysat.nn.batch import check_batch
            >>> from xanysat.testing import synthetic_batch
            >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2", "s1"))).eval()
            >>> batch = synthetic_batch(("s2", "s1"), extent_m=60, batch_size=2)
            >>> layout = check_batch(batch, 20, tuple(model.projectors))  # a 3 x 3 grid
            >>> with torch.no_grad():
            ...     tokens = list(model.sensor_tokens(batch, layout).patches.values())
            ...     out = model.combine(model.embed_positions(tokens, (3, 3), 2), [], (3, 3), 2)
            ...     reference = model(batch, 20, "all")
            >>> out.shape, torch.equal(out, reference)
            (torch.Size([2, 10, 32]), True)
        """
        B, D = patches.shape[0], self.config.embed_dim
        n_prefix = 1 + len(tiles)
        pos = self.position_embedding(grid, scale)
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(patches.dtype), *tiles, patches], dim=1)
        query_pos = torch.cat([pos.new_zeros(n_prefix, D), pos]).to(x.dtype)
        x = self.combiner(x, query_pos, grid, n_prefix, positions)
        return torch.cat([x[:, :1], x[:, n_prefix:]], dim=1)

    def _project(self, name: str, batch: dict[str, Tensor], layout: BatchLayout) -> Tensor:
        modality = MODALITIES[name]
        projector = self.projectors[name]
        mask = layout.masks.get(name)
        if modality.time_series:
            pixels = 1 if modality.tile_token else max(1, layout.scale // modality.reduce_scale)
            return projector(batch[name], batch[f"{name}_dates"], pixels, mask)
        return projector(batch[name], layout.scale, mask)

    def _dense(self, patches: Tensor, sub: Tensor, layout: BatchLayout, dense_layout: str) -> Tensor:
        B, P, D = patches.shape
        h, w = layout.grid
        S = sub.shape[1]
        side = round(S**0.5)
        projector = self.projectors[layout.output_modality]
        if dense_layout == "raster" and isinstance(projector, VHRProjector):
            sub = sub[:, projector.raster_order(layout.scale).to(sub.device)]
        features = torch.cat([patches.reshape(B * P, 1, D).expand(-1, S, -1), sub], dim=-1)
        features = features.view(B, h, w, side, side, 2 * D).permute(0, 1, 3, 2, 4, 5)
        return features.reshape(B, h * side, w * side, 2 * D)
