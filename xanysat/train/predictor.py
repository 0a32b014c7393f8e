"""The JEPA predictor: context tokens in, target-patch embeddings out (SPEC 5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xanysat.nn.layers import Block, init_linears, sincos_2d

__all__ = ["Predictor"]


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
