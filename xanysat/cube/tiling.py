"""Tile and block geometry in metres: no data, no torch, no xarray.

The grid is cut into *tiles* (the model's context, anchored at the cube's top-left corner),
each seen with an ``overlap`` halo that is cropped after the forward; whole tiles are grouped
into *blocks*, one dask task and one output chunk each. Everything here is integer arithmetic
on the grid, so the result never depends on how the input is chunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xanysat.errors import PatchSizeError
from xanysat.sensors.rules import check_patch_size
from xanysat.sensors.table import MODALITIES

MAX_PATCHES_PER_TILE = 1024
OUTPUTS = ("patch", "tile", "dense")


@dataclass(frozen=True)
class Geometry:
    """Tiles, blocks and the output grid of one embedding job.

    Attributes:
        extent_m: ``(height, width)`` of the cube.
        patch_size: patch side in metres.
        tile_m: ``(height, width)`` of a tile.
        overlap: halo around each tile in metres (a multiple of the patch size).
        block_tiles: ``(rows, cols)`` of tiles per block.
        output: ``"patch"``, ``"tile"`` or ``"dense"``.
        cell_m: ``(height, width)`` of an output cell.
        offset_m: where the tile grid starts inside the cube's data.

    Derived: ``n_tiles``, ``block_m``, ``n_blocks``, ``out_shape``, ``cells_per_tile``,
    ``out_chunks`` and ``tiles_of_block(block)``.

    Example:
        >>> g = make_geometry((300, 500), 40, ["s2"], tile_size=160, block_tiles=2)
        >>> g.n_tiles, g.n_blocks, g.block_m  # partial tiles at the far edges count
        ((2, 4), (1, 2), (320, 320))
        >>> g.out_shape, g.cells_per_tile, g.out_chunks  # 40 m cells, one chunk per block
        ((8, 13), (4, 4), ((8,), (8, 5)))
        >>> g.tiles_of_block((0, 1))
        [(0, 2), (0, 3), (1, 2), (1, 3)]
    """

    extent_m: tuple[float, float]
    patch_size: int
    tile_m: tuple[int, int]
    overlap: int
    block_tiles: tuple[int, int]
    output: str
    cell_m: tuple[float, float]
    offset_m: tuple[float, float] = (0.0, 0.0)
    """Where the tile grid starts inside the cube's data (data before it serves as halo only)."""

    @property
    def n_tiles(self) -> tuple[int, int]:
        return tuple(math.ceil(round(e / t, 6)) for e, t in zip(self.extent_m, self.tile_m))

    @property
    def block_m(self) -> tuple[int, int]:
        return tuple(b * t for b, t in zip(self.block_tiles, self.tile_m))

    @property
    def n_blocks(self) -> tuple[int, int]:
        return tuple(math.ceil(n / b) for n, b in zip(self.n_tiles, self.block_tiles))

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output cells covering the cube (partial cells at the far edges included)."""
        return tuple(math.ceil(round(e / c, 6)) for e, c in zip(self.extent_m, self.cell_m))

    @property
    def cells_per_tile(self) -> tuple[int, int]:
        return tuple(round(t / c) for t, c in zip(self.tile_m, self.cell_m))

    @property
    def out_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Output chunk sizes along y and x: one chunk per block."""
        chunks = []
        for n, b, cpt in zip(self.out_shape, self.block_tiles, self.cells_per_tile):
            step = b * cpt
            chunks.append(tuple(min(step, n - start) for start in range(0, n, step)))
        return tuple(chunks)

    def tiles_of_block(self, block: tuple[int, int]) -> list[tuple[int, int]]:
        """Tile indices (global) of a block, row-major, clipped to the grid."""
        (ny, nx), (by, bx) = self.n_tiles, self.block_tiles
        return [
            (ty, tx)
            for ty in range(block[0] * by, min((block[0] + 1) * by, ny))
            for tx in range(block[1] * bx, min((block[1] + 1) * bx, nx))
        ]


def make_geometry(extent_m, patch_size, sensors, *, output="patch", tile_size=None, overlap=0,
                  block_tiles=None, output_modality=None, tile_bytes=None, max_block_bytes=512 * 2**20,
                  offset_m=(0.0, 0.0), preferred_tile_m=None) -> Geometry:
    """Check the tiling options against the cube's sensors and build the ``Geometry``.

    Args:
        extent_m: ``(height, width)`` of the cube in metres.
        patch_size: patch side in metres (a multiple of 10).
        sensors: the cube's sensor names.
        tile_size: tile side in metres (int, or ``(height, width)``); default: at most 32 x 32
            patches, shrunk to the cube where it is smaller.
        overlap: halo in metres, a multiple of ``patch_size``.
        block_tiles: tiles per block side (int or pair); default from ``tile_bytes`` so that a
            task reads at most ``max_block_bytes``, at most 8 x 8 tiles.
        tile_bytes: input bytes of one tile with its halo (for the default ``block_tiles``), or a
            function of the tile size ``(height, width)`` that gives them.

        output: ``"patch"``, ``"tile"`` or ``"dense"``.
        output_modality: the sensor of dense outputs (default the first patch-level one).
        max_block_bytes: input bytes a task may read, for the default ``block_tiles``.
        offset_m: where the tile grid starts inside the cube's data.
        preferred_tile_m: the default tile side when the model has one (``model.card.tile_m``: the
            tile size it was trained on), rounded to whole patches, instead of 32 patches.

    Returns:
        The ``Geometry``.

    Raises:
        PatchSizeError: a patch, tile or overlap size the sensors cannot be cut into.
        ValueError: an unknown ``output`` or a non-positive ``block_tiles``.

    Example:
        >>> g = make_geometry((300, 500), 20, ["aerial", "s2"], output="dense", tile_size=100)
        >>> g.cell_m, g.out_shape, g.block_tiles  # dense: one cell per 2 m aerial token
        ((2.0, 2.0), (150, 250), (3, 5))
        >>> make_geometry((1000, 1000), 10, ["s2"]).tile_m  # default: 32 x 32 patches
        (320, 320)
        >>> make_geometry((300, 500), 40, ["s2"], tile_size=100)
        Traceback (most recent call last):
            ...
        xanysat.errors.PatchSizeError: tile_size must be a positive multiple of patch_size (40 m), got 100.
    """
    if output not in OUTPUTS:
        extra = " (for output='all', embed twice: 'tile' and 'patch')" if output == "all" else ""
        raise ValueError(f"output must be one of {OUTPUTS}{extra}, got {output!r}.")
    patch_size = check_patch_size(patch_size, sensors)
    spatial = [s for s in sensors if not MODALITIES[s].tile_token]
    if not spatial and output != "tile":
        raise PatchSizeError(f"{', '.join(sensors)} alone gives only a tile embedding: use output='tile'.")
    if tile_size is None:
        side = int(math.isqrt(MAX_PATCHES_PER_TILE))
        if preferred_tile_m:
            side = min(side, max(1, round(preferred_tile_m / patch_size)))
        tile_m = tuple(min(side, max(1, math.ceil(round(e / patch_size, 6)))) * patch_size for e in extent_m)
    else:
        tile_m = _pair(tile_size, "tile_size")
        for t in tile_m:
            if t <= 0 or t % patch_size:
                raise PatchSizeError(f"tile_size must be a positive multiple of patch_size ({patch_size} m), got {tile_size!r}.")
        patches = (tile_m[0] // patch_size) * (tile_m[1] // patch_size)
        if patches > 4 * MAX_PATCHES_PER_TILE:
            raise PatchSizeError(
                f"tile_size {tile_m} m holds {patches} patches of {patch_size} m; AnySat's attention is quadratic in "
                f"patches: keep tiles at most about {MAX_PATCHES_PER_TILE} patches (e.g. tile_size={32 * patch_size})."
            )
    overlap = int(overlap)
    if overlap < 0 or overlap % patch_size:
        raise PatchSizeError(f"overlap must be a non-negative multiple of patch_size ({patch_size} m), got {overlap!r}.")
    if output == "dense":
        output_modality = output_modality or spatial[0]
        if output_modality not in spatial:
            raise PatchSizeError(f"output_modality {output_modality!r} is not a patch-level sensor of the cube; use one of {spatial}.")
        token = MODALITIES[output_modality].token_m
        cell_m = (token, token)
    elif output == "tile":
        cell_m = tuple(float(t) for t in tile_m)
    else:
        cell_m = (float(patch_size), float(patch_size))
    if callable(tile_bytes):
        tile_bytes = tile_bytes(tile_m)
    if block_tiles is None:
        n_tiles = [math.ceil(round(e / t, 6)) for e, t in zip(extent_m, tile_m)]
        side = 8 if not tile_bytes else max(1, min(8, math.isqrt(max(1, int(max_block_bytes // tile_bytes)))))
        block_tiles = tuple(min(side, n) for n in n_tiles)
    else:
        block_tiles = _pair(block_tiles, "block_tiles")
        if min(block_tiles) < 1:
            raise ValueError(f"block_tiles must be positive, got {block_tiles!r}.")
    for b, t in zip(block_tiles, tile_m):
        if overlap > b * t:
            raise PatchSizeError(f"overlap {overlap} m is larger than a block ({b * t} m); use a smaller overlap or larger blocks.")
    return Geometry(tuple(float(e) for e in extent_m), patch_size, tile_m, overlap, block_tiles, output, cell_m,
                    tuple(float(o) for o in offset_m))


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what} must be a number or a (height, width) pair, got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)
