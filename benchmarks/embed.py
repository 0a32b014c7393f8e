"""``xanysat.embed`` on a growing Sentinel-2 cube: wall time, tiles/s, peak memory, overhead
over the bare model.

The cube is a synthetic, lazily generated S2 L2A series (10 bands, uint16, nodata 0) in
odc-stac's layout (one variable per band, chunks ``time=1, y=x=512``), so the measurement
includes reading it, normalising and rechunking it onto the block grid. Each size runs in
fresh subprocesses (peak RSS does not mix): one times ``embed(...).compute()`` and then the
identical tiles through the bare model (``model(batch, patch_size)``, same batches, same
threads); one times ``embed(...).to_zarr(store)``.

    python benchmarks/embed.py                       # untrained-tiny, 640/1280/2560 m, 2 threads
    python benchmarks/embed.py --model base          # AnySatConfig.base(), random weights (~10x slower)
    python benchmarks/embed.py --sizes 1280 5120 10240 --dates 2 --tile-size 320 --no-zarr
    python benchmarks/embed.py --profile 1280        # cProfile of one embed run (sync scheduler)

Defaults: 160 m tiles (4 x 4 patches of 40 m), 2 x 2 tiles per block and batches of 4 (one
block's tiles), so that even the smallest cube has several blocks (tasks) and the batches
of ``embed`` and of the bare model are the same. Columns: ``graph s`` is the time to build the
graph (part of ``embed s``); ``fwd in embed s`` is the time spent in the model's forwards during
the embed run (the model's ``forward`` timed by a monkeypatch); ``max|diff|`` compares the
embed output with the bare model's. Timings on a shared machine are noisy: ``--repeat`` keeps
the fastest of several runs.

Targets: overhead (embed / bare model - 1) <= 10 %; peak memory flat from 1x to 16x in area
(streaming: a task holds one block, not the scene; ``compute()`` also holds the result, given
as ``out MB``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OVERHEAD_TARGET = 0.10
MEMORY_TARGET = 1.25  # peak RSS at 16x / peak RSS at 1x


# ---------------------------------------------------------------- child process


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def lazy_s2(side_m: int, n_dates: int, seed: int = 0):
    """A lazily generated S2 cube as odc-stac loads it: one uint16 variable per band."""
    import dask.array as da
    import numpy as np
    import rioxarray  # noqa: F401
    import xarray as xr

    from xanysat import MODALITIES

    m = MODALITIES["s2"]
    n = side_m // 10
    chunks = (1, 512, 512)
    rng = da.random.default_rng(seed)
    coords = {
        "time": np.datetime64("2021-03-01", "ns") + np.arange(n_dates) * np.timedelta64(16, "D"),
        "y": 5_700_000.0 - (np.arange(n) + 0.5) * 10,
        "x": 600_000.0 + (np.arange(n) + 0.5) * 10,
    }
    data_vars = {}
    for band, mean, std in zip(m.bands, m.norm.mean, m.norm.std):
        values = rng.standard_normal((n_dates, n, n), chunks=chunks, dtype="float32") * (std / 3) + mean
        values = da.clip(values, 1, 65535).astype("uint16")
        data_vars[band] = xr.DataArray(values, dims=("time", "y", "x"), attrs={"nodata": 0})
    return xr.Dataset(data_vars, coords=coords).rio.write_crs("EPSG:32631")


def make_model(name: str):
    """The model argument for ``embed`` and the bare module (loaded/registered once)."""
    import torch

    import xanysat
    from xanysat.cube.runtime import get_model, model_ref

    if name == "base":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            arg = xanysat.AnySat(xanysat.AnySatConfig.base()).eval()
    else:
        arg = name
    ref = model_ref(arg, device="cpu", dtype="float32")  # saves an in-memory model to the cache once
    return arg, get_model(ref)


class Timers:
    """Time spent inside the embedding tasks (``xanysat.cube.blocks.run_block``, monkeypatched) and
    inside the model's forwards (the model's own ``forward``: lock waits excluded)."""

    def __init__(self):
        self.task = self.forward = 0.0
        self.tasks = self.forwards = 0

    def install(self, model):
        from xanysat.cube import blocks

        run_block, forward = blocks.run_block, model.forward

        def timed_block(*a, **k):
            t = time.perf_counter()
            try:
                return run_block(*a, **k)
            finally:
                self.task += time.perf_counter() - t
                self.tasks += 1

        def timed_forward(*a, **k):
            t = time.perf_counter()
            try:
                return forward(*a, **k)
            finally:
                self.forward += time.perf_counter() - t
                self.forwards += 1

        blocks.run_block, model.forward = timed_block, timed_forward
        return lambda: (setattr(blocks, "run_block", run_block), model.__dict__.pop("forward", None))


def embed_kwargs(spec):
    return dict(patch_size=spec["patch_size"], tile_size=spec["tile_size"], block_tiles=spec["block_tiles"],
                batch_size=spec["batch_size"], device="cpu", dtype="float32", sensor="s2")


def warm_up(arg, model, spec):
    """One forward of a full batch and one ``embed`` of a one-tile cube: one-time costs (imports,
    allocations, caches) out of the timings."""
    import torch

    import xanysat
    from xanysat.testing import synthetic_batch

    tile = spec["tile_size"] or min(spec["side"], 32 * spec["patch_size"])
    batch = synthetic_batch(("s2",), extent_m=tile, batch_size=spec["batch_size"], n_dates=spec["dates"])
    with torch.inference_mode():
        model(batch, spec["patch_size"], "patch")
    xanysat.embed(lazy_s2(tile, spec["dates"], seed=1), model=arg, **embed_kwargs(spec)).compute()


def bare_batches(cube, emb, spec):
    """The tiles ``embed`` cut, normalised, in the same batches (per block, ``batch_size``)."""
    import numpy as np
    import torch

    from xanysat import MODALITIES
    from xanysat.cube.embed import day_of_year

    m = MODALITIES["s2"]
    x = cube[list(m.bands)].to_dataarray("band").transpose("time", "band", "y", "x").values.astype("float32")
    x = (x - np.asarray(m.norm.mean, "float32")[:, None, None]) / np.asarray(m.norm.std, "float32")[:, None, None]
    doy = torch.tensor(day_of_year(cube["time"].values), dtype=torch.float32)
    tile_m = emb.attrs["tile_size_m"]
    tile_px = [t // 10 for t in tile_m]
    cells = [t // spec["patch_size"] for t in tile_m]
    block_tiles = [emb.data.chunks[1][0] // cells[0], emb.data.chunks[2][0] // cells[1]]
    n_tiles = [-(-s // t) for s, t in zip(x.shape[-2:], tile_px)]
    batches = []
    for by in range(0, n_tiles[0], block_tiles[0]):
        for bx in range(0, n_tiles[1], block_tiles[1]):
            tiles = [(ty, tx) for ty in range(by, min(by + block_tiles[0], n_tiles[0]))
                     for tx in range(bx, min(bx + block_tiles[1], n_tiles[1]))]
            for start in range(0, len(tiles), spec["batch_size"]):
                group = tiles[start:start + spec["batch_size"]]
                data = np.stack([x[..., ty * tile_px[0]:(ty + 1) * tile_px[0], tx * tile_px[1]:(tx + 1) * tile_px[1]]
                                 for ty, tx in group])
                batch = {"s2": torch.from_numpy(data), "s2_dates": doy.expand(len(group), -1)}
                batches.append((group, batch))
    return batches, cells


def child(spec) -> dict:
    import dask
    import numpy as np
    import torch

    import xanysat

    torch.set_num_threads(spec["threads"])
    profiling = bool(spec.get("profile"))
    # cProfile sees one thread only: profile with the synchronous scheduler.
    dask.config.set(scheduler="sync" if profiling else "threads", num_workers=spec["threads"])
    arg, model = make_model(spec["model"])
    cube = lazy_s2(spec["side"], spec["dates"])
    warm_up(arg, model, spec)
    result = {"rss_before_mb": max_rss_mb()}
    if spec["mode"] == "zarr":
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            emb = xanysat.embed(cube, model=arg, **embed_kwargs(spec))
            emb.to_zarr(Path(tmp) / "emb.zarr", mode="w", consolidated=False)
            result["seconds"] = time.perf_counter() - start
        result["peak_mb"] = max_rss_mb()
        return result

    embed_s, graph_s, bare_s, batches = [], [], [], None
    for repeat in range(spec.get("repeat", 1)):
        timers = Timers()
        uninstall = timers.install(model)
        if profiling:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        start = time.perf_counter()
        emb = xanysat.embed(cube, model=arg, **embed_kwargs(spec))
        graph_s.append(time.perf_counter() - start)
        out = emb.compute()
        embed_s.append(time.perf_counter() - start)
        uninstall()
        if profiling:
            import io
            import pstats

            profile.disable()
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text)
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
            result["profile"] = text.getvalue()
        if repeat == 0:
            result.update(peak_mb=max_rss_mb(), out_mb=out.nbytes / 2**20, tasks=timers.tasks,
                          task_s=timers.task, forward_s=timers.forward, forwards=timers.forwards,
                          tiles=int(np.prod([-(-spec["side"] // t) for t in emb.attrs["tile_size_m"]])))
            batches, cells = bare_batches(cube, emb, spec)
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = [(group, model(batch, spec["patch_size"], "patch")) for group, batch in batches]
        bare_s.append(time.perf_counter() - start)

    values, error = out.values, 0.0
    for group, y in outputs:
        for (ty, tx), tile in zip(group, y.numpy()):
            cell = values[:, ty * cells[0]:(ty + 1) * cells[0], tx * cells[1]:(tx + 1) * cells[1]]
            error = max(error, float(np.abs(np.moveaxis(tile, -1, 0) - cell).max()))
    fastest = int(np.argmin(embed_s))
    result.update(seconds=embed_s[fastest], graph_s=graph_s[fastest], bare_s=min(bare_s), bare_batches=len(batches),
                  max_abs_diff=error)
    return result


# ---------------------------------------------------------------- parent


def run_child(spec, env) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child failed for {spec}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1280, 2560], help="square sides in metres")
    parser.add_argument("--model", default="untrained-tiny", choices=["untrained-tiny", "base"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads and dask threads")
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=40)
    parser.add_argument("--tile-size", type=int, default=160, help="metres; 0: embed's default (up to 32 x 32 patches)")
    parser.add_argument("--block-tiles", type=int, default=2, help="0: embed's default (by memory, at most 8)")
    parser.add_argument("--repeat", type=int, default=2, help="embed and bare runs per size (the fastest is kept)")
    parser.add_argument("--no-zarr", action="store_true", help="skip the to_zarr runs")
    parser.add_argument("--profile", type=int, metavar="SIDE", help="print a cProfile of one embed run and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    base = dict(model=args.model, threads=args.threads, dates=args.dates, batch_size=args.batch_size,
                patch_size=args.patch_size, tile_size=args.tile_size or None, block_tiles=args.block_tiles or None,
                repeat=args.repeat)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XANYSAT_CACHE": cache, "OMP_NUM_THREADS": str(args.threads)}
        if args.profile:
            print(run_child({**base, "side": args.profile, "mode": "embed", "profile": True}, env)["profile"])
            return
        print(f"model {args.model}, S2 {args.dates} dates x 10 bands uint16 (chunks time=1, y=x=512 px), patch "
              f"{args.patch_size} m, tile {base['tile_size'] or 'default'} m, block_tiles "
              f"{base['block_tiles'] or 'default'}, batch {args.batch_size}, {args.threads} threads", flush=True)
        header = ("side m", "area", "tiles", "tasks", "embed s", "graph s", "tiles/s", "bare s", "overhead",
                  "fwd in embed s", "zarr s", "out MB", "peak MB", "peak zarr MB", "max|diff|")
        print(" | ".join(header), flush=True)
        rows = []
        for side in args.sizes:
            r = run_child({**base, "side": side, "mode": "embed"}, env)
            if not args.no_zarr:
                r["zarr"] = run_child({**base, "side": side, "mode": "zarr"}, env)
            r["side"] = side
            rows.append(r)
            zarr = r.get("zarr")
            cells = (side, f"{(side / args.sizes[0]) ** 2:.0f}x", r["tiles"], r["tasks"], f"{r['seconds']:.2f}",
                     f"{r['graph_s']:.2f}", f"{r['tiles'] / r['seconds']:.2f}", f"{r['bare_s']:.2f}",
                     f"{r['seconds'] / r['bare_s'] - 1:+.1%}", f"{r['forward_s']:.2f}",
                     f"{zarr['seconds']:.2f}" if zarr else "-", f"{r['out_mb']:.1f}", f"{r['peak_mb']:.0f}",
                     f"{zarr['peak_mb']:.0f}" if zarr else "-", f"{r['max_abs_diff']:.1e}")
            print(" | ".join(str(c) for c in cells), flush=True)

    overheads = [r["seconds"] / r["bare_s"] - 1 for r in rows]
    print(f"\noverhead (embed s / bare s - 1): {', '.join(f'{o:+.1%}' for o in overheads)}; target <= "
          f"{OVERHEAD_TARGET:.0%} at every size: {verdict(max(overheads) <= OVERHEAD_TARGET)}")
    fixed = [(r["seconds"] - r["graph_s"]) / r["bare_s"] - 1 for r in rows]
    ratios = ", ".join(f"{r['forward_s'] / r['bare_s']:.2f}" for r in rows)
    print(f"  without the graph build: {', '.join(f'{o:+.1%}' for o in fixed)}; time in the model's forwards "
          f"inside embed / bare: {ratios}")
    first, last = rows[0], rows[-1]
    area = (last["side"] / first["side"]) ** 2
    growth = last["peak_mb"] / first["peak_mb"]
    held = (last["peak_mb"] - last["out_mb"]) / (first["peak_mb"] - first["out_mb"])
    print(f"peak RSS, embed(...).compute(), {first['side']} m -> {last['side']} m ({area:.0f}x area): "
          f"{first['peak_mb']:.0f} -> {last['peak_mb']:.0f} MB, ratio {growth:.2f}; without the result it holds "
          f"({first['out_mb']:.0f} -> {last['out_mb']:.0f} MB) {held:.2f}; target <= {MEMORY_TARGET:.2f}: "
          f"{verdict(growth <= MEMORY_TARGET)}")
    if "zarr" in last:
        zgrowth = last["zarr"]["peak_mb"] / first["zarr"]["peak_mb"]
        print(f"peak RSS, embed(...).to_zarr(): {first['zarr']['peak_mb']:.0f} -> {last['zarr']['peak_mb']:.0f} MB, "
              f"ratio {zgrowth:.2f}; target <= {MEMORY_TARGET:.2f}: {verdict(zgrowth <= MEMORY_TARGET)}")
    print(f"(total {time.perf_counter() - started:.0f} s; process baseline with the model loaded: "
          f"{first['rss_before_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
