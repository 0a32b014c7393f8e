"""The main job, offline: a STAC query in, an embedding map out.

``python -m xanysat.apps.demo [--out DIR] [--model NAME] [--patch-size 40] [--loader odc]``

1. writes a STAC catalogue of real imagery the package carries (WorldCereal test inputs,
   1 km x 1 km in EPSG:32631: 12 monthly Sentinel-2 L2A medians and Sentinel-1 backscatter,
   2020-11 to 2021-10) as Cloud-Optimized GeoTIFFs;
2. starts a real STAC API on 127.0.0.1 over it (``rustac serve``), searches it by bbox and
   dates, and loads Sentinel-2 and Sentinel-1 on one 10 m grid (odc-stac or stackstac);
3. embeds the cube with AnySat (resumable, region by region) into ``embedding.zarr``;
4. draws ``map.png``: the Sentinel-2 true colour, the PCA colours of the embeddings, and the
   cosine similarity of every patch to the centre patch;
5. prints where everything is, the wall time and the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PANEL_PX = 400
GAP_PX = 12
CAPTION_PX = 22
DATETIME = "2020-11-01/2021-10-31"
SENSORS = {"s2": "sentinel-2-l2a", "s1-asc": "sentinel-1-rtc"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (steps 1 to 5 of the module docstring) and print where the results are.

    Needs ``rustac`` for the local STAC API and takes a minute or more: the full run is not a
    doctest.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``): ``--out``, ``--model``,
            ``--patch-size``, ``--loader``.

    Returns:
        0 when done.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()) as stderr:
        ...     try:
        ...         main(["--loader", "gdal"])
        ...     except SystemExit as exit:
        ...         print("exit code", exit.code)
        exit code 2
        >>> "argument --loader: invalid choice: 'gdal'" in stderr.getvalue()
        True
        >>> main(["--out", "results/demo", "--patch-size", "40"])  # doctest: +SKIP
        0
    """
    args = _parse_args(argv)
    started = time.perf_counter()
    import xanysat
    from xanysat import stac
    from xanysat.cube.maps import pca_rgb_map, similarity
    from xanysat.stac.sample_catalog import write_sample_catalog
    from xanysat.stac.server import serve

    args.out.mkdir(parents=True, exist_ok=True)
    catalog = write_sample_catalog(args.out / "stac")
    bbox = _catalog_bbox(catalog)
    with serve(catalog) as url:
        _say(f"STAC API at {url} (catalogue of real imagery in {catalog})")
        items = stac.search(url, list(SENSORS.values()), bbox=bbox, datetime=DATETIME)
        _say(f"search bbox={tuple(round(v, 4) for v in bbox)} datetime={DATETIME}: {len(items)} items")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no 'SCL' asset.*")
            cube = stac.load(items, sensors=SENSORS, loader=args.loader)
    for name in cube.children:
        da = cube[name][name]
        _say(f"  {name}: {dict(da.sizes)} {', '.join(map(str, da.band.values))}")
    # The sensor table has no statistics for s1-asc: fit them on the cube (recorded in attrs).
    normalize = {"s2": True, "s1-asc": xanysat.fit_normalization(cube)["s1-asc"]}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*B8A.*")
        emb = xanysat.embed_to_zarr(cube, args.out / "embedding.zarr", args.patch_size, model=args.model,
                                    normalize=normalize, progress=False, resume=False)
    emb = emb.compute()
    rgb = pca_rgb_map(emb)
    centre = (float(emb.x[emb.sizes["x"] // 2]), float(emb.y[emb.sizes["y"] // 2]))
    sim = similarity(emb, *centre).compute()
    picture = figure(_true_colour(cube["s2"]["s2"]), rgb.values, sim.values,
                     (f"Sentinel-2 true colour ({cube['s2']['s2'].sizes['time']} months, median)",
                      f"AnySat embeddings, PCA ({args.patch_size} m patches)"
                      + (" - random weights" if "untrained" in emb.attrs["model_id"] else ""),
                      "cosine similarity to the centre patch"))
    png = args.out / "map.png"
    picture.save(png)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model:      {emb.attrs['model_id']}")
    print(f"embedding:  {dict(emb.sizes)} in {emb.rio.crs}, written to {args.out / 'embedding.zarr'}")
    print(f"map:        {png}")
    print(f"wall time:  {time.perf_counter() - started:.1f} s, peak memory {peak_mb:.0f} MB")
    return 0


def _catalog_bbox(catalog: Path) -> tuple[float, float, float, float]:
    import json

    boxes = [json.loads(line)["bbox"] for line in (catalog / "items.ndjson").read_text().splitlines() if line]
    b = np.array(boxes, dtype="float64")
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def _true_colour(s2) -> np.ndarray:
    from xanysat.cube.maps import percentile_stretch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rgb = s2.sel(band=["B04", "B03", "B02"]).median("time", skipna=True).values
    return percentile_stretch(np.moveaxis(rgb, 0, -1))


def figure(true_colour: np.ndarray, pca: np.ndarray, sim: np.ndarray, captions) -> Image.Image:
    """Three captioned panels, north up: true colour, PCA colours, similarity (viridis).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> figure(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8), rng.integers(0, 255, (25, 25, 3),
        ...        dtype=np.uint8), rng.uniform(-1, 1, (25, 25)), ("a", "b", "c")).size
        (1224, 422)
    """
    from xanysat.cube.maps import colormap

    finite = sim[np.isfinite(sim)]
    lo, hi = (float(finite.min()), 1.0) if finite.size else (0.0, 1.0)
    panels = [true_colour, pca[..., :3], colormap(sim, lo, hi)]
    width = 3 * PANEL_PX + 2 * GAP_PX
    out = Image.new("RGB", (width, PANEL_PX + CAPTION_PX), "white")
    draw = ImageDraw.Draw(out)
    for index, (panel, caption) in enumerate(zip(panels, captions)):
        left = index * (PANEL_PX + GAP_PX)
        out.paste(Image.fromarray(np.ascontiguousarray(panel)).resize((PANEL_PX, PANEL_PX), Image.Resampling.NEAREST),
                  (left, 0))
        draw.text((left + 4, PANEL_PX + 5), caption, fill="black")
    return out


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xanysat.apps.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder (default results/demo)")
    parser.add_argument("--model", default=None, help="'base', a saved model directory, or the embedded default")
    parser.add_argument("--patch-size", type=int, default=40, help="patch side in metres (default 40)")
    parser.add_argument("--loader", choices=("odc", "stackstac"), default="odc")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
