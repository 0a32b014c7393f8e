"""Per-sensor projectors: pixels -> sub-patch tokens ``(B * P, S, D)``.

Very-high-resolution images go through a conv + MLP projector; time series through an L-TAE
(lightweight temporal attention) applied to every pixel's series.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from einops import rearrange
from torch import Tensor, nn

from xanysat.sensors.table import Modality


class VHRProjector(nn.Module):
    """Conv (kernel = stride = sub-patch pixels, no bias) then MLP, for single-date images.

    Tokens inside a patch are ordered cell-major, as the released weights expect: 10 m
    cells in raster order, then the sub-patches of each cell in raster order. With one
    sub-patch per cell (spot, naip, or any sensor at patch 10 m) this is plain raster order.

    Args:
        modality: the sensor (a single-date row of ``MODALITIES``).
        dim: token width D.
        mlp_hidden: hidden width of the MLP.

    Example:
        >>> import torch
        >>> from xanysat.sensors.table import MODALITIES
        >>> naip = VHRProjector(MODALITIES["naip"], dim=32, mlp_hidden=64)
        >>> naip(torch.randn(2, 4, 16, 16), scale=1).shape  # 20 m tiles, 10 m patches of 1 token
        torch.Size([8, 1, 32])
        >>> aerial = VHRProjector(MODALITIES["aerial"], dim=32, mlp_hidden=64)  # 2 m tokens
        >>> aerial(torch.randn(1, 4, 100, 100), scale=2).shape  # one 20 m patch of 10 x 10 tokens
        torch.Size([1, 100, 32])
        >>> aerial.raster_order(2)[:10].tolist()  # raster row 0 spans two 10 m cells
        [0, 1, 2, 3, 4, 25, 26, 27, 28, 29]
    """

    def __init__(self, modality: Modality, dim: int, mlp_hidden: int):
        super().__init__()
        self.modality = modality
        self.conv = nn.Conv2d(modality.n_bands, dim, modality.subpatch_px, modality.subpatch_px, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_hidden), nn.LayerNorm(mlp_hidden), nn.ReLU(),
            nn.Linear(mlp_hidden, dim), nn.LayerNorm(dim), nn.ReLU(),
        )
        self.subpatches_per_cell = max(1, round(10 / modality.token_m))

    def forward(self, x: Tensor, scale: int, mask: Tensor | None = None) -> Tensor:
        """``x``: ``(B, C, H, W)``; ``scale``: patch side in 10 m cells; returns ``(B*P, S, D)``."""
        if mask is not None:
            x = x.masked_fill(~mask, 0.0)
        tokens = self.conv(x)
        k = self.subpatches_per_cell
        return self.mlp(rearrange(
            tokens, "b d (ph cr sr) (pw cc sc) -> (b ph pw) (cr cc sr sc) d", cr=scale, cc=scale, sr=k, sc=k
        ))

    def raster_order(self, scale: int) -> Tensor:
        """Permutation taking this projector's token order to raster order inside a patch."""
        k = self.subpatches_per_cell
        index = torch.arange(scale * scale * k * k).view(scale, scale, k, k)
        return index.permute(0, 2, 1, 3).reshape(-1)


def _group_norm_masked(x: Tensor, groups: int, weight: Tensor, bias: Tensor, valid: Tensor,
                       eps: float = 1e-5) -> Tensor:
    """GroupNorm over (channels of a group x valid dates) of each series ``x: (N, T, D)``."""
    N, T, D = x.shape
    xg = x.view(N, T, groups, D // groups)
    w = valid.to(x.dtype)[:, :, None, None]
    count = w.sum(1, keepdim=True) * (D // groups)
    mean = (xg * w).sum((1, 3), keepdim=True) / count
    var = ((xg - mean).square() * w).sum((1, 3), keepdim=True) / count
    return ((xg - mean) / torch.sqrt(var + eps)).view(N, T, D) * weight + bias


CHUNK_OBSERVATIONS = 16384


@lru_cache(maxsize=32)
def _date_denominator(period: int, d: int) -> Tensor:
    return torch.pow(float(period), 2 * (torch.arange(d).float() // 2) / d)


class LTAEProjector(nn.Module):
    """L-TAE projector for time series ``(B, T, C, H, W)`` with dates ``(B, T)``.

    Each pixel's series goes through an input MLP, (s2 only) a GroupNorm over the series,
    a sinusoidal date encoding, attention with one learned query per head pooling the dates,
    and an output MLP. Pixels are then cut into patches, raster order inside a patch.

    Invalid (padded or missing) dates of a pixel are left out of the attention and of the
    input GroupNorm, and not computed at all. Invalid single values are replaced by the
    learned missing-value parameter ``pad_value`` (the official ``pad_parameter``).

    Args:
        modality: the sensor (a time-series row of ``MODALITIES``).
        dim: token width D.
        mlp_in: widths of the input MLP; the last is the attention width.
        n_head: attention heads (learned queries).
        d_k: key width per head.

    Example:
        >>> import torch
        >>> from xanysat.sensors.table import MODALITIES
        >>> ltae = LTAEProjector(MODALITIES["s2"], dim=32, mlp_in=(4, 16, 32), n_head=4, d_k=8).eval()
        >>> x, dates = torch.randn(2, 3, 10, 4, 4), torch.tensor([[10, 50, 90], [20, 60, 100]])
        >>> with torch.no_grad():
        ...     tokens = ltae(x, dates, pixels_per_patch=2)  # 4 x 4 px -> 2 x 2 patches of 2 x 2 px
        >>> tokens.shape
        torch.Size([8, 4, 32])
        >>> mask = torch.ones(2, 3, 10, 4, 4, dtype=torch.bool)
        >>> mask[:, 1] = False  # the second date is missing everywhere
        >>> with torch.no_grad():
        ...     masked = ltae(x, dates, 2, mask)
        ...     dropped = ltae(x[:, [0, 2]], dates[:, [0, 2]], 2)
        >>> torch.allclose(masked, dropped, atol=1e-5)
        True
    """

    def __init__(self, modality: Modality, dim: int, mlp_in: tuple[int, ...], n_head: int, d_k: int):
        super().__init__()
        self.modality = modality
        self.n_head = n_head
        self.d_k = d_k
        widths = (modality.n_bands, *mlp_in)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.GroupNorm(4, w_out), nn.ReLU(), nn.Dropout(modality.dropout)]
        self.mlp_in = nn.Sequential(*layers)
        d_model = mlp_in[-1]
        self.in_norm = nn.GroupNorm(n_head, d_model) if modality.in_norm else None
        self.query = nn.Parameter(torch.zeros(n_head, d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        self.attn_drop = nn.Dropout(0.1)
        self.mlp_out = nn.Sequential(nn.Linear(d_model, dim), nn.GroupNorm(4, dim), nn.ReLU())
        self.drop = nn.Dropout(modality.dropout)
        self.out_norm = nn.GroupNorm(n_head, dim)
        self.pad_value = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def date_encoding(self, dates: Tensor, d_model: int) -> Tensor:
        """``(N, T)`` day numbers -> ``(N, T, d_model)``: interleaved sin/cos tiled over heads.

        Computed in float32 like the release, whatever the model's dtype.
        """
        denominator = _date_denominator(self.modality.date_period, d_model // self.n_head).to(dates.device)
        angles = dates.to(torch.float32)[..., None] / denominator
        even = torch.arange(angles.shape[-1], device=dates.device) % 2 == 0
        return torch.where(even, angles.sin(), angles.cos()).repeat(1, 1, self.n_head)

    def encode_series(self, x: Tensor, dates: Tensor, valid: Tensor | None) -> Tensor:
        """``x: (N, T, C)``, ``dates: (N, T)``, ``valid: (N, T)`` or None -> ``(N, D)``.

        Runs in chunks of about ``CHUNK_OBSERVATIONS`` pixel-dates to bound memory.
        """
        step = max(1, CHUNK_OBSERVATIONS // x.shape[1])
        if x.shape[0] <= step:
            return self._encode_chunk(x, dates, valid)
        return torch.cat([
            self._encode_chunk(x[i:i + step], dates[i:i + step], None if valid is None else valid[i:i + step])
            for i in range(0, x.shape[0], step)
        ])

    def _encode_chunk(self, x: Tensor, dates: Tensor, valid: Tensor | None) -> Tensor:
        N, T, C = x.shape
        if valid is None:
            h = self.mlp_in(x.reshape(N * T, C)).view(N, T, -1)
            if self.in_norm is not None:
                h = self.in_norm(h.transpose(1, 2)).transpose(1, 2)
        else:
            h_valid = self.mlp_in(x[valid])
            h = h_valid.new_zeros(N, T, h_valid.shape[-1])
            h[valid] = h_valid
            if self.in_norm is not None:
                h = _group_norm_masked(h, self.n_head, self.in_norm.weight, self.in_norm.bias, valid)
        h = h + self.date_encoding(dates, h.shape[-1]).to(h.dtype)
        keys = self.key(h).view(N, T, self.n_head, self.d_k)
        scores = torch.einsum("hk,nthk->nht", self.query.to(h.dtype), keys) / self.d_k**0.5
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        attn = self.attn_drop(scores.softmax(dim=-1))
        values = h.view(N, T, self.n_head, -1)
        pooled = torch.einsum("nht,nthc->nhc", attn, values).reshape(N, -1)
        out = self.drop(self.mlp_out(pooled))
        return self.out_norm(out)

    def forward(self, x: Tensor, dates: Tensor, pixels_per_patch: int, mask: Tensor | None = None) -> Tensor:
        """``x: (B, T, C, H, W)``, ``dates: (B, T)``, ``mask``: like ``x`` (True = valid) -> ``(B*P, S, D)``."""
        B, T, C, H, W = x.shape
        valid = None
        if mask is not None:
            x = torch.where(mask, x, self.pad_value.to(x.dtype))
            valid = rearrange(mask.any(dim=2), "b t h w -> (b h w) t")
            # A pixel with no valid date attends the dates some pixel of its sample has (padded
            # dates stay out); a sample with no valid date at all keeps every date.
            sample_dates = mask.flatten(2).any(dim=2)
            sample_dates = sample_dates | ~sample_dates.any(dim=1, keepdim=True)
            fallback = sample_dates[:, None, :].expand(B, H * W, T).reshape(B * H * W, T)
            valid = torch.where(valid.any(dim=1, keepdim=True), valid, fallback)
            if bool(valid.all()):
                valid = None
        series = rearrange(x, "b t c h w -> (b h w) t c")
        pixel_dates = dates[:, None, :].expand(B, H * W, T).reshape(B * H * W, T)
        tokens = self.encode_series(series, pixel_dates, valid)
        s = pixels_per_patch
        return rearrange(tokens, "(b ph sh pw sw) d -> (b ph pw) (sh sw) d", b=B, sh=s, sw=s, ph=H // s)
