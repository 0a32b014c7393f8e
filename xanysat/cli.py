"""``xanysat`` on the command line: embed, plan, map, info.

    xanysat embed --stac URL --collections sentinel-2-l2a --bbox W S E N --datetime 2021-01-01/2021-12-31 \\
        --patch-size 40 -o emb.zarr
    xanysat plan  --stac URL --collections sentinel-2-l2a --bbox W S E N --patch-size 40
    xanysat map   emb.zarr -o map.png            # or map.tif (GeoTIFF), --similarity X Y
    xanysat info

Exit codes: 0 done; 1 unexpected failure (traceback printed); 2 bad command line; 3 bad input
(STAC API unreachable, no items, unknown collection or band, bad bbox...); 4 model weights
missing or invalid; 130 interrupted (finished regions of an ``embed`` stay in the store and
a rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    from xanysat.errors import AnySatInputError, CheckpointError

    try:
        return args.run(args)
    except AnySatInputError as error:
        print(f"xanysat {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except CheckpointError as error:
        print(f"xanysat {args.command}: model error: {error}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        print(f"xanysat {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xanysat", description="AnySat embeddings from STAC imagery.")
    sub = parser.add_subparsers(dest="command")
    embed = sub.add_parser("embed", help="search, load, embed and write a Zarr store (resumable)")
    _cube_arguments(embed)
    _embed_arguments(embed)
    embed.add_argument("-o", "--output-zarr", required=True, help="Zarr store to write (resumed if it exists)")
    embed.add_argument("--no-resume", action="store_true", help="overwrite the store instead of resuming")
    embed.add_argument("--png", help="also write a PCA-RGB map of the result here")
    embed.set_defaults(run=_run_embed)
    plan = sub.add_parser("plan", help="report tiles, tasks, memory and time without computing")
    _cube_arguments(plan)
    _embed_arguments(plan)
    plan.add_argument("--throughput", type=float, help="tiles per second (default: measured on this machine)")
    plan.set_defaults(run=_run_plan)
    map_ = sub.add_parser("map", help="Zarr embedding -> PCA-RGB (or similarity) PNG or GeoTIFF")
    map_.add_argument("zarr", help="embedding store written by 'xanysat embed'")
    map_.add_argument("-o", "--output", required=True, help="map.png or map.tif")
    map_.add_argument("--similarity", nargs=2, type=float, metavar=("X", "Y"),
                      help="cosine similarity to the cell at these map coordinates instead of PCA")
    map_.set_defaults(run=_run_map)
    info = sub.add_parser("info", help="sensors, models and versions")
    info.set_defaults(run=_run_info)
    return parser


def _cube_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("STAC query and cube")
    g.add_argument("--stac", required=True, help="STAC API URL")
    g.add_argument("--collections", nargs="+", required=True)
    g.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("WEST", "SOUTH", "EAST", "NORTH"),
                   help="area in degrees (EPSG:4326)")
    g.add_argument("--datetime", help="e.g. 2021-01-01/2021-12-31")
    g.add_argument("--max-items", type=int)
    g.add_argument("--sensor", action="append", default=[], metavar="SENSOR=COLLECTION",
                   help="map a collection to a sensor, e.g. s1-asc=sentinel-1-rtc (default: from the sensor table)")
    g.add_argument("--crs", help="output CRS (default: the items' CRS)")
    g.add_argument("--loader", choices=("odc", "stackstac"), default="odc")
    g.add_argument("--composite", help="month, season, year or a pandas frequency")
    g.add_argument("--no-cloud-mask", action="store_true")


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedding")
    g.add_argument("--patch-size", type=int, default=40, help="patch side in metres (default 40)")
    g.add_argument("--output", dest="output_kind", choices=("patch", "tile", "dense"), default="patch")
    g.add_argument("--model", help="'base', a saved model directory, or the embedded default")
    g.add_argument("--tile-size", type=int, help="tile side in metres")
    g.add_argument("--overlap", type=int, default=0, help="halo in metres around each tile")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))


def _sensors(pairs: list[str]) -> dict | None:
    from xanysat.errors import StacError

    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise StacError(f"--sensor takes SENSOR=COLLECTION, got {pair!r}.")
        sensor, collection = pair.split("=", 1)
        mapping[sensor.strip()] = collection.strip()
    return mapping or None


def _cube(args, *, check_assets: bool):
    from xanysat import stac

    _say(f"searching {args.stac} for {', '.join(args.collections)} ...")
    items = stac.search(args.stac, args.collections, bbox=args.bbox, datetime=args.datetime,
                        max_items=args.max_items)
    _say(f"found {len(items)} items; loading the cube ({args.loader}) ...")
    return stac.load(items, sensors=_sensors(args.sensor), bbox=args.bbox, crs=args.crs, loader=args.loader,
                     composite=args.composite, cloud_mask=not args.no_cloud_mask, check_assets=check_assets)


def _embed_options(args) -> dict:
    return {"output": args.output_kind, "model": args.model, "tile_size": args.tile_size, "overlap": args.overlap,
            "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype}


def _run_embed(args) -> int:
    from xanysat.io import embed_to_zarr

    start = time.perf_counter()
    cube = _cube(args, check_assets=True)
    for name, node in cube.children.items():
        da = node[name]
        _say(f"  {name}: {dict(da.sizes)} from {da.attrs.get('stac:collection')}")
    options = _embed_options(args)
    emb = embed_to_zarr(cube, args.output_zarr, args.patch_size, options.pop("output"),
                        resume=not args.no_resume, **options)
    _say(f"wrote {args.output_zarr}: embedding {dict(emb.sizes)} in {emb.rio.crs} "
         f"({time.perf_counter() - start:.1f} s)")
    if args.png:
        from xanysat.viz import save_png

        save_png(emb, args.png, title=f"AnySat PCA, patch {args.patch_size} m")
        _say(f"wrote {args.png}")
    return EXIT_OK


def _run_plan(args) -> int:
    from xanysat.planning import plan

    cube = _cube(args, check_assets=False)
    options = _embed_options(args)
    options.pop("batch_size")
    report = plan(cube, args.patch_size, options.pop("output"), throughput=args.throughput, **options)
    print(report)
    return EXIT_OK


def _run_map(args) -> int:
    from pathlib import Path

    import xarray as xr

    from xanysat.errors import AnySatInputError
    from xanysat.viz import pca_rgb_map, save_png, similarity

    if not Path(args.zarr).exists():
        raise AnySatInputError(f"no Zarr store at {args.zarr}; write one with 'xanysat embed ... -o {args.zarr}'.")
    try:
        emb = xr.open_zarr(args.zarr)["embedding"]
    except (KeyError, OSError, ValueError) as error:
        raise AnySatInputError(f"{args.zarr} holds no 'embedding' written by xanysat: {error}") from error
    picture = similarity(emb, *args.similarity) if args.similarity else pca_rgb_map(emb)
    out = Path(args.output)
    if out.suffix.lower() in (".tif", ".tiff"):
        raster = picture.transpose("rgb", "y", "x") if "rgb" in picture.dims else picture
        raster.rio.to_raster(out)
    elif out.suffix.lower() == ".png":
        save_png(picture, out, title=Path(args.zarr).name)
    else:
        raise AnySatInputError(f"--output must end in .png or .tif, got {out.name!r}.")
    _say(f"wrote {out}")
    return EXIT_OK


def _run_info(args) -> int:
    import importlib.metadata as md

    import xanysat
    from xanysat.modalities import MODALITIES

    print(f"xanysat {xanysat.__version__}")
    for package in ("torch", "xarray", "dask", "odc-stac", "stackstac", "pystac-client", "rioxarray", "zarr"):
        try:
            print(f"  {package} {md.version(package)}")
        except md.PackageNotFoundError:
            print(f"  {package} not installed")
    print("sensors:")
    for m in MODALITIES.values():
        collections = ", ".join(sorted({f"{s.catalog}:{s.collection}" for s in m.stac})) or "no STAC source"
        kind = "time series" if m.time_series else "single date"
        print(f"  {m.name:13s} {m.resolution_m:g} m, {kind}, bands {', '.join(m.bands)}; {collections}")
    print("models:")
    print("  base: the released AnySat weights (Hugging Face g-astruc/AnySat) — " + _base_status())
    print("  a directory written by xanysat.checkpoint.save_pretrained")
    return EXIT_OK


def _base_status() -> str:
    from xanysat.errors import CheckpointError
    from xanysat.hub import official_checkpoint_path

    try:
        return f"available at {official_checkpoint_path(local_files_only=True)}"
    except CheckpointError:
        return "not on this machine"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
