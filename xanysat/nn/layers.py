"""Transformer layers shared by the patch encoder and the modality combiner.

Names follow timm/dinov2 (``qkv``, ``proj``, ``fc1``, ``norm1``). Attention runs through
``scaled_dot_product_attention``; the iRPE bias of AnySat enters as an additive mask.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IRPE_RATIO = 1.9
IRPE_BUCKETS = 8  # 2 * int(2 * ratio) + 1 distance buckets + 1 for prefix tokens


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[sin(pos * w_k), cos(pos * w_k)]``, ``w_k = 10000^(-k / (dim / 2))``: ``(M,) -> (M, dim)``.

    Computed in float32 like the release (whose float64 runs also use float32 encodings).

    Args:
        dim: channels (even).
        pos: ``(M,)`` positions.

    Returns:
        ``(M, dim)`` float32: sines in the first half of the channels, cosines in the second.

    Example:
        >>> sincos_1d(4, torch.tensor([0.0, 1.0]))  # w = (1, 0.01)
        tensor([[0.0000, 0.0000, 1.0000, 1.0000],
                [0.8415, 0.0100, 0.5403, 0.9999]])
    """
    omega = torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.to(torch.float32)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@lru_cache(maxsize=256)
def _sincos_2d_cpu(dim: int, height: int, width: int, spacing: float) -> Tensor:
    with torch.inference_mode(False):
        return _sincos_2d_grid(dim, height, width, spacing)


def _sincos_2d_grid(dim: int, height: int, width: int, spacing: float) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cols = cols.reshape(-1).float() * spacing
    rows = rows.reshape(-1).float() * spacing
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def sincos_2d(dim: int, height: int, width: int, spacing: float, *, like: Tensor) -> Tensor:
    """2-D sin-cos embedding of a raster grid: ``(height * width, dim)``, row-major.

    The first half of the channels encodes the column (x) coordinate, the second half the row
    (y), each multiplied by ``spacing`` (metres or 10 m units, as the caller's convention).

    Args:
        dim: channels (a multiple of 4).
        height, width: the grid.
        spacing: distance between neighbouring cells.
        like: a tensor whose device and dtype the result takes.

    Returns:
        ``(height * width, dim)``, cached per arguments (do not modify it in place).

    Example:
        >>> pos = sincos_2d(8, 2, 3, 1.0, like=torch.zeros(0, dtype=torch.float64))
        >>> pos.shape, pos.dtype
        (torch.Size([6, 8]), torch.float64)
        >>> columns, rows = torch.tensor([0.0, 1, 2, 0, 1, 2]), torch.tensor([0.0, 0, 0, 1, 1, 1])
        >>> torch.equal(pos, torch.cat([sincos_1d(4, columns), sincos_1d(4, rows)], dim=1).double())
        True
    """
    return _sincos_2d_on(dim, height, width, float(spacing), like.device, like.dtype)


@lru_cache(maxsize=256)
def _sincos_2d_on(dim: int, height: int, width: int, spacing: float, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False):  # cached tensors must stay usable by autograd later
        return _sincos_2d_cpu(dim, height, width, spacing).to(device=device, dtype=dtype)


def _irpe_bucket(distance: Tensor) -> Tensor:
    """iRPE piecewise index of rounded Euclidean distances (method 'euc', ratio 1.9), offset by beta."""
    alpha, beta, gamma = IRPE_RATIO, 2 * IRPE_RATIO, 8 * IRPE_RATIO
    far = alpha + torch.log(distance.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    index = torch.where(distance <= alpha, distance.round(), far.round().clamp(max=beta))
    return index.long() + int(beta)


@lru_cache(maxsize=256)
def _irpe_buckets_cpu(height: int, width: int, n_prefix: int) -> Tensor:
    with torch.inference_mode(False):
        return _irpe_bucket_grid(height, width, n_prefix)


def _irpe_bucket_grid(height: int, width: int, n_prefix: int) -> Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).double()
    distance = (pos[:, None, :] - pos[None, :, :]).square().sum(-1).sqrt().round()
    grid = _irpe_bucket(distance)
    n = n_prefix + height * width
    buckets = torch.full((n, n), IRPE_BUCKETS - 1, dtype=torch.long)
    buckets[n_prefix:, n_prefix:] = grid
    return buckets


@lru_cache(maxsize=256)
def irpe_buckets(height: int, width: int, n_prefix: int, device: torch.device) -> Tensor:
    """Bucket ids ``(n_prefix + h*w, n_prefix + h*w)`` of iRPE 'euc' on a row-major grid.

    Distances 0, 1, 2-3 and >= 4 cells map to buckets 3, 4, 5, 6; any pair with a prefix
    (class or MODIS) token maps to bucket 7. Euclidean distances are rounded first.

    Args:
        height, width: the grid of patch tokens.
        n_prefix: tokens before the grid (class token, MODIS tokens).
        device: where the (cached) result lives.

    Returns:
        ``(n_prefix + h*w, n_prefix + h*w)`` int64, cached per arguments.

    Example:
        >>> irpe_buckets(1, 6, 0, torch.device("cpu"))[0].tolist()  # from the first of a row of 6 cells
        [3, 4, 5, 5, 6, 6]
        >>> irpe_buckets(2, 2, 1, torch.device("cpu"))
        tensor([[7, 7, 7, 7, 7],
                [7, 3, 4, 4, 4],
                [7, 4, 3, 4, 4],
                [7, 4, 4, 3, 4],
                [7, 4, 4, 4, 3]])
    """
    with torch.inference_mode(False):
        return _irpe_buckets_cpu(height, width, n_prefix).to(device)


def contextual_bias(q: Tensor, weight: Tensor, buckets: Tensor) -> Tensor:
    """Contextual iRPE on keys: ``bias[b, :, i, j] = q[b, 0, i] . weight[0, :, buckets[i, j]]``.

    As released, the bias is computed from the first head's query and shared by all heads
    (the reference gathers with a one-head index).

    Args:
        q: queries ``(B, H, Lq, d)``.
        weight: lookup table ``(1, d, n_buckets)``.
        buckets: ``(Lq, Lk)`` bucket ids, or ``(B, Lq, Lk)`` for one set per sample.

    Returns:
        ``(B, 1, Lq, Lk)``, broadcast over heads.

    Example:
        >>> q, weight = torch.randn(2, 4, 5, 8), torch.randn(1, 8, IRPE_BUCKETS)
        >>> buckets = irpe_buckets(2, 2, 1, torch.device("cpu"))
        >>> bias = contextual_bias(q, weight, buckets)
        >>> bias.shape, torch.allclose(bias[1, 0, 2, 3], q[1, 0, 2] @ weight[0, :, buckets[2, 3]])
        (torch.Size([2, 1, 5, 5]), True)
    """
    table = q[:, :1] @ weight[0]  # (B, 1, Lq, n_buckets)
    index = buckets.unsqueeze(-3).expand(table.shape[0], 1, *buckets.shape[-2:])
    return torch.gather(table, -1, index)


def irpe_buckets_at(grid: tuple[int, int], n_prefix: int, positions: Tensor, n_blocks: int) -> Tensor:
    """iRPE bucket ids between tokens at given grid positions, one set per sample.

    The queries are the ``n_prefix`` prefix tokens, then one token per position; the keys are
    the prefix tokens, then ``n_blocks`` blocks (one per sensor) of one token per position. Each
    pair gets the bucket of its true grid distance, as in ``irpe_buckets``.

    Args:
        grid: ``(h, w)`` patch grid.
        n_prefix: tokens before the grid tokens (class token, MODIS tokens).
        positions: ``(B, K)`` row-major grid indices of the tokens.
        n_blocks: sensor blocks of ``K`` tokens among the keys.

    Returns:
        ``(B, n_prefix + K, n_prefix + n_blocks * K)`` int64, on the device of ``positions``.

    Example:
        >>> positions = torch.tensor([[0, 1, 2, 3]])  # the whole 2 x 2 grid, in order
        >>> buckets = irpe_buckets_at((2, 2), 1, positions, n_blocks=2)
        >>> buckets.shape
        torch.Size([1, 5, 9])
        >>> full = irpe_buckets(2, 2, 1, torch.device("cpu"))
        >>> torch.equal(buckets[0], torch.cat([full, full[:, 1:]], dim=1))
        True
    """
    full = irpe_buckets(grid[0], grid[1], n_prefix, positions.device)
    prefix = torch.arange(n_prefix, device=positions.device).expand(positions.shape[0], -1)
    rows = torch.cat([prefix, positions + n_prefix], dim=1)
    cols = torch.cat([prefix, (positions + n_prefix).repeat(1, n_blocks)], dim=1)
    return full[rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def init_linears(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every ``nn.Linear`` (as the release).

    Args:
        module: changed in place; other layer types are left as they are.

    Example:
        >>> mlp = Mlp(256, 1024)
        >>> init_linears(mlp)
        >>> round(mlp.fc1.weight.detach().std().item(), 3), mlp.fc2.bias.detach().abs().max().item()
        (0.02, 0.0)
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Mlp(nn.Module):
    """Transformer MLP: Linear -> GELU -> Linear, back to ``dim`` channels.

    Args:
        dim: input and output channels.
        hidden: hidden channels.

    Example:
        >>> mlp = Mlp(16, 64)
        >>> mlp(torch.randn(2, 5, 16)).shape, mlp.fc1.out_features
        (torch.Size([2, 5, 16]), 64)
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention, optionally with a contextual iRPE bias on keys.

    ``heads_as_tokens`` reproduces the official ``flash_attn=True`` path, which passes
    ``(B, heads, N, d)`` tensors to a kernel expecting ``(B, N, heads, d)`` and so attends
    across the heads of each token (SPEC section 9.3). For comparison only.

    Args:
        dim: token width.
        num_heads: heads (``dim`` must be divisible by it).
        irpe: add the contextual iRPE bias; ``forward`` then needs the ``grid`` of the patch
            tokens, which follow ``N - h*w`` prefix tokens.
        heads_as_tokens: the official ``flash_attn=True`` behaviour.

    Example:
        >>> attention = Attention(16, 2, irpe=True)
        >>> attention(torch.randn(2, 1 + 6, 16), grid=(2, 3)).shape  # class token + 2 x 3 patches
        torch.Size([2, 7, 16])
        >>> attention.rpe_weight.shape  # (1, head dim, buckets)
        torch.Size([1, 8, 8])
    """

    def __init__(self, dim: int, num_heads: int, *, irpe: bool = False, heads_as_tokens: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.heads_as_tokens = heads_as_tokens
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rpe_weight = nn.Parameter(torch.zeros(1, self.head_dim, IRPE_BUCKETS)) if irpe else None

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = None
        if self.rpe_weight is not None:
            height, width = grid
            buckets = irpe_buckets(height, width, N - height * width, x.device)
            bias = contextual_bias(q * self.scale, self.rpe_weight, buckets)
        if self.heads_as_tokens:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        if self.heads_as_tokens:
            out = out.transpose(1, 2)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        eps: LayerNorm epsilon.
        irpe, heads_as_tokens: as for ``Attention``.

    Example:
        >>> block = Block(16, 2, 4.0, eps=1e-6)
        >>> x = torch.randn(2, 5, 16)
        >>> block(x).shape, block.mlp.fc1.out_features
        (torch.Size([2, 5, 16]), 64)
        >>> with torch.no_grad():
        ...     for linear in (block.attn.proj, block.mlp.fc2):
        ...         _ = linear.weight.zero_(), linear.bias.zero_()
        >>> torch.equal(block(x), x)  # both branches are residual
        True
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float, irpe: bool = False,
                 heads_as_tokens: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, irpe=irpe, heads_as_tokens=heads_as_tokens)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    """One learned query per output position attends to all tokens, with iRPE on keys.

    Args:
        dim: token width.
        num_heads: attention heads.

    Example:
        >>> cross = CrossAttention(16, 2)
        >>> x = torch.randn(2, 1 + 2 * 6, 16)  # class token, then 2 sensors of 2 x 3 patches
        >>> query_pos = torch.randn(1 + 6, 16)
        >>> cross(x, query_pos, grid=(2, 3), n_prefix=1).shape
        torch.Size([2, 7, 16])
        >>> positions = torch.tensor([[5, 0], [1, 2]])  # per sample, 2 of the 6 patches of each sensor
        >>> some = torch.cat([x[:, :1], *(x[:, 1 + 6 * m:][torch.arange(2)[:, None], positions] for m in range(2))], 1)
        >>> out = cross(some, query_pos, grid=(2, 3), n_prefix=1, positions=positions)
        >>> out.shape
        torch.Size([2, 3, 16])
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rpe_weight = nn.Parameter(torch.zeros(1, self.head_dim, IRPE_BUCKETS))

    def forward(self, x: Tensor, query_pos: Tensor, grid: tuple[int, int], n_prefix: int,
                positions: Tensor | None = None) -> Tensor:
        """Attend from the prefix and grid queries to ``x = [prefix tokens, M sensor blocks]``.

        Args:
            x: ``(B, n_prefix + M * K, D)``: prefix tokens, then M blocks of K grid tokens.
            query_pos: ``(n_prefix + h*w, D)`` added to the learned query: prefix rows, then one
                row per grid patch.
            grid: ``(h, w)`` patch grid.
            n_prefix: tokens before the sensor blocks.
            positions: ``(B, K)`` grid index of each token of a block, per sample; None: the
                blocks hold every patch in order (``K = h*w``).

        Returns:
            ``(B, n_prefix + K, D)``: one output per prefix token and per position.
        """
        B, N, C = x.shape
        height, width = grid
        n_tokens = height * width if positions is None else positions.shape[1]
        n_modalities = (N - n_prefix) // n_tokens if n_tokens else 0
        k = self.wk(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if positions is None:
            q = (self.query + query_pos).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)
            buckets = irpe_buckets(height, width, n_prefix, x.device)
            buckets = torch.cat([buckets[:, :n_prefix], buckets[:, n_prefix:].repeat(1, n_modalities)], dim=1)
        else:
            prefix = torch.arange(n_prefix, device=positions.device).expand(B, -1)
            query_pos = query_pos[torch.cat([prefix, positions + n_prefix], dim=1)]
            q = (self.query + query_pos).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
            buckets = irpe_buckets_at(grid, n_prefix, positions, n_modalities)
        bias = contextual_bias(q, self.rpe_weight, buckets).to(q.dtype)  # un-scaled query, as the release
        q = q.expand(B, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, -1, C))


class CrossBlock(nn.Module):
    """Cross-attention block of the combiner; no residual around the attention (as released).

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        eps: LayerNorm epsilon.

    Example:
        >>> block = CrossBlock(16, 2, 4.0, eps=1e-6)
        >>> x = torch.randn(2, 1 + 2 * 6, 16)  # class token, then 2 sensors of 2 x 3 patches
        >>> block(x, torch.zeros(1 + 6, 16), (2, 3), 1).shape  # one output per patch and the class token
        torch.Size([2, 7, 16])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, query_pos: Tensor, grid: tuple[int, int], n_prefix: int,
                positions: Tensor | None = None) -> Tensor:
        """``x``, ``query_pos``, ``grid``, ``n_prefix``, ``positions``: as ``CrossAttention.forward``."""
        x = self.attn(self.norm1(x), query_pos, grid, n_prefix, positions)
        return x + self.mlp(self.norm2(x))
