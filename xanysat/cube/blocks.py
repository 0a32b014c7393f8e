"""The body of one embedding task, on numpy arrays: assemble, tile, batch, forward, crop, mask."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import torch

from xanysat.cube.runtime import DTYPES, forward_lock, get_model, placement
from xanysat.cube.task import pixel_window


def run_block(job, block: tuple[int, int], pieces) -> np.ndarray:
    """Embed the tiles of ``block``; ``pieces[i]`` holds sensor i's input chunks (or their halo
    strips) under the block's window, each as ``[array, first row, first column]``.

    The body of ``xanysat.cube.embed.embed_block``, the task of every output block.

    Args:
        job: the ``xanysat.cube.embed.EmbedJob``.
        block: ``(row, column)`` of the output block.
        pieces: per sensor of ``job.sensors``, a list of ``[array, first row, first column]``:
            normalised numpy arrays in projector band order, placed by their first pixel in
            the sensor's grid. Pixels of the window no piece covers are missing (NaN).

    Returns:
        ``(features, rows, cols)`` float32: the block's cells, NaN where no input pixel is valid.

    Example:
        >>> import xanysat
        >>> from xanysat.cube.embed import plan_job
        >>> from xanysat.cube.options import EmbedOptions
        >>> from xanysat.cube.prepare import prepare
        >>> from xanysat.cube.runtime import model_ref
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3)
        >>> job, arrays = plan_job(prepare(cube), EmbedOptions(40), model_ref("untrained-tiny", device="cpu"))
        >>> s2 = np.asarray(arrays["s2"])  # (time, band, y, x): one chunk, the whole block
        >>> out = run_block(job, (0, 0), [[[s2, 0, 0]]])
        >>> out.shape, np.allclose(out, xanysat.embed(cube, 40, model="untrained-tiny").values)
        ((256, 3, 2), True)
        >>> top = s2[..., :6, :]  # only the northern 60 m: the last row of 40 m cells has no input
        >>> np.isnan(run_block(job, (0, 0), [[[top, 0, 0]]])).all(axis=0).tolist()
        [[False, False], [False, False], [True, True]]
    """
    g = job.geometry
    windows = {plan.name: _assemble(plan, g, block, sensor_pieces) for plan, sensor_pieces in zip(job.sensors, pieces)}
    rows, cols = g.out_chunks[0][block[0]], g.out_chunks[1][block[1]]
    out = np.full((job.features, rows, cols), np.nan, dtype="float32")
    groups = defaultdict(list)
    for tile in g.tiles_of_block(block):
        inputs, kept = {}, {}
        for plan in job.sensors:
            x = _tile_input(plan, g, block, tile, windows[plan.name])
            if plan.doy is not None:
                # Dates with no valid value in the tile are left out, as if the cube lacked them
                # (masked, they would still reach the pixels that have no valid date at all).
                dates = np.flatnonzero(np.isfinite(x).reshape(x.shape[0], -1).any(axis=1))
                x = x if dates.size == x.shape[0] else x[dates]
                kept[plan.name] = tuple(int(d) for d in dates)
            if np.isfinite(x).any():
                inputs[plan.name] = x
        spatial = [n for n in inputs if not _plan(job, n).tile_token]
        if not inputs or (g.output != "tile" and not spatial):
            continue
        if g.output == "dense" and job.output_modality not in inputs:
            continue
        groups[tuple((n, kept.get(n)) for n in inputs)].append((tile, inputs))
    if groups:
        model = get_model(job.model)
        for sensors, items in groups.items():
            for start in range(0, len(items), job.batch_size):
                batch_items = items[start:start + job.batch_size]
                result = _forward(model, job, sensors, [inputs for _, inputs in batch_items])
                for (tile, _), value in zip(batch_items, result):
                    _place(out, value, g, block, tile)
    if g.output != "tile":
        out[:, ~_valid_cells(job, windows, (rows, cols))] = np.nan
    return out


def _plan(job, name):
    return next(p for p in job.sensors if p.name == name)


def _assemble(plan, g, block, pieces) -> np.ndarray:
    """The block's window (with halo) of one sensor, NaN outside the data; ``pieces`` are
    ``[array, first row, first column]`` in the sensor's pixel grid."""

    (r0, r1), (c0, c1) = pixel_window(plan, g, block)
    lead = (plan.n_dates, plan.n_bands) if plan.doy is not None else (plan.n_bands,)
    out = np.full((*lead, r1 - r0, c1 - c0), np.nan, dtype="float32")
    for piece, row, col in pieces:
        piece = np.asarray(piece, dtype="float32")
        y, x = row - r0, col - c0
        ys, xs = max(0, -y), max(0, -x)
        ye, xe = min(piece.shape[-2], r1 - r0 - y), min(piece.shape[-1], c1 - c0 - x)
        if ye > ys and xe > xs:
            out[..., y + ys:y + ye, x + xs:x + xe] = piece[..., ys:ye, xs:xe]
    return out


def _tile_input(plan, g, block, tile, window) -> np.ndarray:

    (r0, _), (c0, _) = pixel_window(plan, g, block)
    res = plan.resolution_m
    lo = [tile[a] * g.tile_m[a] - g.overlap + g.offset_m[a] for a in range(2)]
    hi = [(tile[a] + 1) * g.tile_m[a] + g.overlap + g.offset_m[a] for a in range(2)]
    if not plan.tile_token:
        ys, xs = round(lo[0] / res) - r0, round(lo[1] / res) - c0
        ye, xe = round(hi[0] / res) - r0, round(hi[1] / res) - c0
        return window[..., ys:ye, xs:xe]
    picks = []
    for a, offset in ((0, r0), (1, c0)):
        centres = (np.arange(window.shape[-2 + a]) + offset + 0.5) * res
        inside = np.flatnonzero((centres >= lo[a]) & (centres < hi[a]))
        if inside.size == 0:
            middle = (tile[a] + 0.5) * g.tile_m[a] + g.offset_m[a]
            inside = np.array([int(middle // res) - offset])
        picks.append(inside)
    values = window[..., picks[0][:, None], picks[1][None, :]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=(-2, -1), keepdims=True)


def _forward(model, job, sensors, inputs_list) -> np.ndarray:
    """``sensors``: ``(name, indices of the dates kept or None)`` pairs shared by the batch."""
    device, dtype_name = placement(job.model)
    dtype = DTYPES[dtype_name]
    batch = {}
    for name, kept in sensors:
        x = np.stack([inputs[name] for inputs in inputs_list])
        valid = np.isfinite(x)
        if not valid.all():
            batch[f"{name}_mask"] = torch.from_numpy(valid).to(device)
            x = np.where(valid, x, 0.0).astype("float32")
        batch[name] = torch.from_numpy(np.ascontiguousarray(x)).to(device, dtype)
        plan = _plan(job, name)
        if plan.doy is not None:
            dates = torch.tensor([plan.doy[d] for d in kept], dtype=torch.float32).expand(len(inputs_list), -1)
            batch[f"{name}_dates"] = dates.to(device)
    g = job.geometry
    with forward_lock(device), torch.inference_mode():
        y = model(batch, g.patch_size, g.output, job.output_modality if g.output == "dense" else None)
        return y.float().cpu().numpy()


def _place(out, value, g, block, tile) -> None:
    ch, cw = g.cells_per_tile
    row = (tile[0] - block[0] * g.block_tiles[0]) * ch
    col = (tile[1] - block[1] * g.block_tiles[1]) * cw
    if g.output == "tile":
        out[:, row, col] = value
        return
    halo = round(g.overlap / g.cell_m[0])
    core = value[halo:halo + ch, halo:halo + cw]
    rows, cols = min(ch, out.shape[1] - row), min(cw, out.shape[2] - col)
    out[:, row:row + rows, col:col + cols] = np.moveaxis(core[:rows, :cols], -1, 0)


def _valid_cells(job, windows, shape) -> np.ndarray:
    g = job.geometry
    valid = np.zeros(shape, dtype=bool)
    for plan in job.sensors:
        if plan.tile_token or (g.output == "dense" and plan.name != job.output_modality):
            continue
        k = round(g.cell_m[0] / plan.resolution_m)
        halo = round(g.overlap / plan.resolution_m)
        px = np.isfinite(windows[plan.name]).reshape(-1, *windows[plan.name].shape[-2:]).any(axis=0)
        core = px[halo:halo + shape[0] * k, halo:halo + shape[1] * k]
        valid |= core.reshape(shape[0], k, shape[1], k).any(axis=(1, 3))
    return valid
