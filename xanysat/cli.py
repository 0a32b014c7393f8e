"""``xanysat`` on the command line: embed, plan, map, export, info.

Usage::

    xanysat embed --stac URL --collections sentinel-2-l2a --bbox W S E N --datetime 2021-01-01/2021-12-31 \\
        --patch-size 40 -o emb.zarr
    xanysat embed ... --collections sentinel-2-l2a sentinel-1-rtc --fit-normalization ...
    xanysat plan  --stac URL --collections sentinel-2-l2a --bbox W S E N --patch-size 40
    xanysat map   emb.zarr -o map.png            # or map.tif (RGBA COG), --similarity X Y
    xanysat export emb.zarr -o emb.tif           # the embedding as a COG, one band per feature
    xanysat info

Collections map to sensors as ``xanysat.stac.sensor_sources`` decides (Sentinel-1 without
``sat:orbit_state: ascending`` feeds ``s1``); ``--sensor s1-asc=sentinel-1-rtc`` chooses.
Sensors the sensor table has no normalisation statistics for (``s1``, ``s1-asc``...) need
``--fit-normalization`` (mean and std fitted on the cube itself). Clouds are masked where the
items carry a QA asset (``--cloud-mask auto``).

Exit codes: 0 done; 1 unexpected failure (traceback printed); 2 bad command line (argparse: a
missing or unknown flag, a number that is not one); 3 bad input (a bad value, CRS, output path or
``--config`` file; STAC API unreachable, no items, unknown collection or band, bad bbox,
unreadable assets, a store written with other settings...); 4 model unknown, or its weights
missing or invalid; 130 interrupted (finished regions of an ``embed`` stay in the store and a
rerun resumes). Exits 3 and 4 print one line on stderr, ``xanysat COMMAND: error: ...`` (or
``model error:``) naming the fix; the values, paths, configs and model of a command are checked
before any search, pixel read or training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from xanysat.errors import AnySatInputError, CheckpointError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xanysat`` command line (see the module docstring for the commands).

    Errors in the input, the model or an interruption are reported in one line on stderr and
    turned into an exit code; anything else raises.

    Args:
        argv: the arguments after ``xanysat`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: ``EXIT_OK`` (0), ``EXIT_USAGE`` (2: no command), ``EXIT_INPUT`` (3),
        ``EXIT_MODEL`` (4) or ``EXIT_INTERRUPTED`` (130). A bad command line exits with 2
        through ``argparse`` (``SystemExit``).

    Example:
        >>> import tempfile, rioxarray, xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> main(["map", "no-such-store.zarr", "-o", "map.png"]) == EXIT_INPUT  # "no Zarr store at ..."
        True
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     _ = xanysat.embed_to_zarr(synthetic_cube(("s2",), extent_m=160, n_dates=2), f"{directory}/emb.zarr",
        ...                               40, model="untrained-tiny", progress=False)
        ...     code = main(["map", f"{directory}/emb.zarr", "-o", f"{directory}/map.tif"])
        ...     with rioxarray.open_rasterio(f"{directory}/map.tif") as pca:
        ...         result = code, pca.shape, pca.rio.resolution()
        >>> result  # PCA colours and alpha: 4 bands of 4 x 4 cells of 40 m
        (0, (4, 4, 4), (40.0, -40.0))
        >>> main(["embed", "--stac", "https://earth-search.aws.element84.com/v1", "--collections",
        ...       "sentinel-2-l2a", "--bbox", "2.35", "48.85", "2.36", "48.86", "--datetime",
        ...       "2021-01-01/2021-12-31", "-o", "emb.zarr"])  # doctest: +SKIP
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    import warnings

    def one_line(message, category, filename, lineno, line=None):
        return f"xanysat {args.command}: warning: {message}\n"

    formatwarning, warnings.formatwarning = warnings.formatwarning, one_line  # for a person: no source lines
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
    finally:
        warnings.formatwarning = formatwarning


def _parser() -> argparse.ArgumentParser:
    import xanysat

    parser = argparse.ArgumentParser(prog="xanysat", description="AnySat embeddings from STAC imagery.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {xanysat.__version__}")
    sub = parser.add_subparsers(dest="command")
    embed = sub.add_parser("embed", help="search, load, embed and write a Zarr store (resumable)")
    _cube_arguments(embed)
    _embed_arguments(embed)
    embed.add_argument("-o", "--output-zarr", required=True, help="Zarr store to write (resumed if it exists)")
    embed.add_argument("--no-resume", action="store_true",
                       help="overwrite the store instead of resuming (only a store xanysat wrote: other files are "
                            "never deleted)")
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
    export = sub.add_parser("export", help="Zarr embedding -> Cloud-Optimized GeoTIFF (one band per feature)")
    export.add_argument("zarr", help="embedding store written by 'xanysat embed'")
    export.add_argument("-o", "--output", required=True, help="emb.tif")
    export.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="band type (default float32; NaN marks cells with no valid input)")
    export.set_defaults(run=_run_export)
    info = sub.add_parser("info", help="sensors, models and versions")
    info.set_defaults(run=_run_info)
    pre = sub.add_parser("pretrain", help="JEPA pretraining on the real sample cubes (resumable)")
    pre.add_argument("--config", help="TOML file of xanysat.train.loop.PretrainConfig settings (default: the shipped "
                     "default's recipe, xanysat.apps.pretraining.DEFAULT_CONFIG)")
    pre.add_argument("--out", help="run directory (checkpoints, log.csv, loss.png, model/); overrides out_dir")
    pre.add_argument("--steps", type=int, help="overrides the config's steps (default recipe: 800)")
    pre.add_argument("--threads", type=int)
    pre.add_argument("--no-resume", action="store_true", help="start again instead of resuming the run directory")
    pre.set_defaults(run=_run_pretrain)
    for name, helptext in (("finetune", "fine-tune encoder and head on a cube and a label raster (resumable)"),
                           ("probe", "linear probing: train a head on a frozen encoder (resumable)")):
        task = sub.add_parser(name, help=helptext)
        task.add_argument("--config", required=True, help="TOML file of xanysat.apps.finetune.FinetuneConfig settings")
        task.add_argument("--no-resume", action="store_true")
        task.add_argument("--map", help="also write the predicted class map of the cube here (.zarr or .tif)")
        task.set_defaults(run=_run_finetune, freeze=name == "probe")
    evaluate = sub.add_parser("evaluate", help="linear probes of a saved model against random weights")
    evaluate.add_argument("--model", required=True, help="a directory written by save_pretrained")
    evaluate.add_argument("--card", metavar="RUN_DIR", help="the pretraining run directory: also write the model card "
                          "(MODEL/README.md: data, settings, loss curve, collapse monitor, these probes)")
    evaluate.set_defaults(run=_run_evaluate)
    return parser


def _run_pretrain(args) -> int:
    for flag, value in (("--steps", args.steps), ("--threads", args.threads)):
        _check_count(flag, value)
    _check_output_dir("--out", args.out)
    settings = _read_toml(args.config) if args.config else None

    from xanysat.apps.pretraining import default_config, pretrain_default
    from xanysat.nn.checkpoint import save_pretrained
    from xanysat.train.loop import PretrainConfig, config_from_settings

    if settings is None:
        config = default_config("runs/pretrain")
    else:
        config = config_from_settings(settings, PretrainConfig, source=args.config)
    for name, value in (("out_dir", args.out), ("steps", args.steps), ("threads", args.threads)):
        if value is not None:
            setattr(config, name, value)
    _check_pretrain_config(config, args.config or "the default recipe")
    encoder = pretrain_default(config, resume=not args.no_resume)
    out = Path(config.out_dir)
    model_dir = save_pretrained(encoder, out / "model",
                                model_id=f"xanysat-default-{encoder.config.embed_dim}d (JEPA, {config.steps} steps)")
    _say(f"wrote {model_dir} (loss curve {out / 'loss.png'})")
    return EXIT_OK


def _check_pretrain_config(config, source: str) -> None:
    """A pretraining config's counts, run directory and starting weights, before any training."""
    for name in ("steps", "threads", "checkpoint_every", "monitor_every"):
        _check_count(f"{source}: {name}", getattr(config, name))
    _check_output_dir(f"{source}: out_dir", config.out_dir)
    if config.init_from:
        _check_model_dir(config.init_from, f"{source}: init_from")


def _run_evaluate(args) -> int:
    _check_model_dir(args.model, "--model")
    if args.card:
        _check_run_dir(args.card)
    from xanysat.apps.evaluation import compare, table

    results = table(compare(args.model))
    print(results)
    if args.card:
        from xanysat.apps.pretraining import write_model_card

        _say(f"wrote {write_model_card(args.card, args.model, results)}")
    return EXIT_OK


def _check_run_dir(path: str) -> None:
    """``--card``: a pretraining run directory (what ``write_model_card`` reads from it)."""
    files = ("config.json", "log.csv", "monitor.csv", "loss.png")
    missing = [name for name in files if not (Path(path) / name).is_file()]
    _require(not missing, f"--card {path} lacks {', '.join(missing)}; give the run directory that "
                          "'xanysat pretrain --out' wrote.")


def _run_finetune(args) -> int:
    if args.map:
        _check_output_file("--map", args.map, (".tif", ".tiff", ".zarr"))
    settings = _read_toml(args.config)
    from dataclasses import replace

    from xanysat.apps.finetune import FinetuneConfig, finetune, open_cube
    from xanysat.cube.predict import predict
    from xanysat.train.loop import config_from_settings

    cfg = replace(config_from_settings(settings, FinetuneConfig, source=args.config), freeze=args.freeze)
    _check_finetune_config(cfg, args.config)
    task, rows = finetune(cfg, resume=not args.no_resume)
    print("\n".join(" | ".join(r) for r in map(lambda r: [str(c) for c in r], rows)))
    _say(f"wrote {Path(cfg.out_dir) / 'task'}")
    if args.map:
        import json

        classes = json.loads((Path(cfg.out_dir) / "task" / "task.json").read_text())["classes"]
        classes_map = predict(open_cube(cfg.cube), task, kind="classes", classes=classes, tile_size=cfg.tile_m)
        Path(args.map).parent.mkdir(parents=True, exist_ok=True)
        if args.map.endswith((".tif", ".tiff")):
            classes_map.rio.to_raster(args.map)
        else:
            from xanysat.cube.zarr import write_zarr

            write_zarr(classes_map.to_dataset(), args.map, writer="xanysat finetune --map")  # never deletes others
        _say(f"wrote {args.map}")
    return EXIT_OK


def _check_finetune_config(cfg, source: str) -> None:
    """A probe / fine-tuning config's task, files, numbers and model, before the cube is read."""
    from xanysat.apps.finetune import TASKS
    from xanysat.errors import PatchSizeError
    from xanysat.sensors.rules import check_patch_size

    _require(cfg.task in TASKS, f"{source}: task must be one of {', '.join(map(repr, TASKS))}, got {cfg.task!r}.")
    _require(bool(cfg.labels), f'{source}: labels is not set; give the label raster, e.g. labels = "labels.tif".')
    _require(Path(cfg.labels).exists(), f"{source}: labels {cfg.labels!r} does not exist; give the path of a label "
                                        "raster (GeoTIFF, NetCDF or Zarr), relative to the working directory.")
    _require(cfg.cube == "worldcereal" or Path(cfg.cube).exists(),
             f"{source}: cube {cfg.cube!r} does not exist; give 'worldcereal' (the shipped sample) or the path of a "
             "cube xarray.open_datatree reads.")
    for name in ("epochs", "batch_size", "tile_m"):
        _check_count(f"{source}: {name}", getattr(cfg, name))
    try:
        check_patch_size(cfg.patch_size, ())
    except PatchSizeError as error:
        raise AnySatInputError(f"{source}: {error}") from error
    _require(0 < cfg.train_fraction <= 1, f"{source}: train_fraction must be in (0, 1], got {cfg.train_fraction}; "
                                          "e.g. train_fraction = 0.5.")
    _require(cfg.lr > 0 and cfg.weight_decay >= 0, f"{source}: lr must be positive and weight_decay not negative, "
                                                   f"got lr = {cfg.lr}, weight_decay = {cfg.weight_decay}.")
    _require(all(isinstance(c, int) and not isinstance(c, bool) for c in cfg.classes),
             f"{source}: classes must be the label values to learn, whole numbers, got {cfg.classes!r}; "
             "e.g. classes = [1, 2].")
    _check_crs(f"{source}: label_crs", cfg.label_crs, projected=False)
    _check_output_dir(f"{source}: out_dir", cfg.out_dir)
    _check_model(cfg.model, f"{source}: model")


def _cube_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("STAC query and cube")
    g.add_argument("--stac", required=True, help="STAC API URL")
    g.add_argument("--collections", nargs="+", required=True)
    g.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("WEST", "SOUTH", "EAST", "NORTH"),
                   help="area in degrees (EPSG:4326)")
    g.add_argument("--datetime", help="e.g. 2021-01-01/2021-12-31")
    g.add_argument("--max-items", type=int)
    g.add_argument("--timeout", type=float, default=30.0,
                   help="seconds each request to the STAC API or an asset host may take (default: 30)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries of a request that timed out or answered HTTP 429/5xx (default: 3)")
    g.add_argument("--sensor", action="append", default=[], type=_sensor_pair, metavar="SENSOR=COLLECTION",
                   help="map a collection to a sensor, e.g. s1-asc=sentinel-1-rtc (default: from the sensor table)")
    g.add_argument("--crs", help="output CRS (default: the items' CRS)")
    g.add_argument("--loader", choices=("odc", "stackstac"), default="odc")
    g.add_argument("--composite", help="month, season, year or a pandas frequency")
    g.add_argument("--cloud-mask", choices=("auto", "yes", "no"), default="auto",
                   help="mask clouds with the items' QA asset (SCL, QA_PIXEL): auto (where the items carry it), "
                        "yes (required), no (default: auto)")
    g.add_argument("--no-cloud-mask", dest="cloud_mask", action="store_const", const="no",
                   help="same as --cloud-mask no")


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedding")
    g.add_argument("--patch-size", type=int, default=40, help="patch side in metres (default 40)")
    g.add_argument("--output", dest="output_kind", choices=("patch", "tile", "dense"), default="patch")
    g.add_argument("--model", help="'base' (the released weights), 'default' (a small model pretrained by "
                                   "xanysat, where the package ships one), 'untrained-tiny' (random weights), or a "
                                   "saved model directory; default: 'base' if on this machine, else 'default' if "
                                   "shipped, else 'untrained-tiny' with a warning")
    g.add_argument("--tile-size", type=int, help="tile side in metres")
    g.add_argument("--overlap", type=int, default=0, help="halo in metres around each tile")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    g.add_argument("--fit-normalization", action="store_true",
                   help="fit mean and std on the cube for sensors the sensor table has no statistics for "
                        "(e.g. s1 from sentinel-1-rtc): one pass over those sensors' pixels before embedding "
                        "(again on a resumed run); 'plan' reads no pixels and only accounts for them")


def _model_normalization(model) -> dict:
    """The statistics the model carries (the default model has Sentinel-1's)."""
    from xanysat.cube.runtime import client_model, model_ref

    ref = model_ref(model)
    return client_model(ref).card.normalization


def _sensor_pair(text: str) -> tuple[str, str]:
    sensor, sep, collection = text.partition("=")
    if not sep or not sensor.strip() or not collection.strip():
        raise argparse.ArgumentTypeError(f"expected SENSOR=COLLECTION (e.g. s1-asc=sentinel-1-rtc), got {text!r}")
    return sensor.strip(), collection.strip()


def _sensors(pairs: list[tuple[str, str]]) -> dict | None:
    return dict(pairs) or None


def _cube(args, *, check_assets: bool):
    from xanysat import stac

    _say(f"searching {args.stac} for {', '.join(args.collections)} ...")
    items = stac.search(args.stac, args.collections, bbox=args.bbox, datetime=args.datetime,
                        max_items=args.max_items, timeout=args.timeout, retries=args.retries)
    _say(f"found {len(items)} items; loading the cube ({args.loader}) ...")
    cloud_mask = {"auto": "auto", "yes": True, "no": False}[args.cloud_mask]
    return stac.load(items, sensors=_sensors(args.sensor), bbox=args.bbox, crs=args.crs, loader=args.loader,
                     composite=args.composite, cloud_mask=cloud_mask, check_assets=check_assets,
                     timeout=args.timeout, retries=args.retries)


def _embed_options(args, normalize=True):
    """The command line's embed settings as one ``EmbedOptions`` (bad values exit 3 here, in the
    command line's words: ``--batch-size must be ...``)."""
    from xanysat.cube.options import EmbedOptions

    try:
        options = EmbedOptions(args.patch_size, args.output_kind, tile_size=args.tile_size, overlap=args.overlap,
                               batch_size=args.batch_size, device=args.device, dtype=args.dtype, normalize=normalize)
    except AnySatInputError as error:
        name = str(error).split(" ", 1)[0]
        raise AnySatInputError(EMBED_FLAGS.get(name, name) + str(error)[len(name):]) from error
    patch = options.patch_size
    _require(args.tile_size is None or (args.tile_size > 0 and args.tile_size % patch == 0),
             f"--tile-size must be a positive multiple of --patch-size ({patch} m), got {args.tile_size}; e.g. "
             f"--tile-size {8 * patch}, or leave it out for the model's default.")
    _require(options.overlap % patch == 0, f"--overlap must be a multiple of --patch-size ({patch} m), got "
                                           f"{options.overlap}; e.g. --overlap {patch}.")
    return options


def _normalize(args, cube):
    """``True`` (the model's statistics, else the sensor table's), or with ``--fit-normalization``
    sensor -> statistics fitted on the cube for the sensors the table has none for."""
    from xanysat.cube.fit import fit_normalization
    from xanysat.sensors.table import MODALITIES

    missing = [name for name in cube.children if MODALITIES[name].norm is None]
    if not args.fit_normalization:
        unknown = [name for name in missing if name not in _model_normalization(args.model)]
        if unknown:
            raise AnySatInputError(
                f"neither the sensor table nor the model has normalisation statistics for "
                f"{', '.join(map(repr, unknown))}: pass --fit-normalization to fit them on this cube, or leave the "
                "collection out of --collections.")
        return True
    if not missing:
        return True
    _say(f"fitting normalisation statistics for {', '.join(missing)} on the cube ...")
    stats = fit_normalization(cube.filter(lambda node: node.name in missing))
    return {name: stats[name] for name in missing}


def _run_embed(args) -> int:
    start = time.perf_counter()
    _embed_options(args)  # settings, outputs, query and model checked before any search or read
    _check_store("-o", args.output_zarr)
    if args.png:
        _check_output_file("--png", args.png, (".png",))
    _check_query(args)
    _check_model(args.model, "--model")
    from xanysat.cube.zarr import embed_to_zarr

    cube = _cube(args, check_assets=True)
    for name, node in cube.children.items():
        da = node[name]
        _say(f"  {name}: {dict(da.sizes)} from {da.attrs.get('stac:collection')}")
    options = _embed_options(args)
    options = options.replace(normalize=_normalize(args, cube))
    before = _regions_done(args.output_zarr) if not args.no_resume else None
    try:
        emb = embed_to_zarr(cube, args.output_zarr, options=options, model=args.model, resume=not args.no_resume)
    except AnySatInputError:  # e.g. -o holds other files: the message names a new path
        raise
    except ValueError as error:
        if "resume=False" not in str(error):  # a store written with other settings or from another input
            raise
        raise AnySatInputError(f"{error} (command line: another -o, or --no-resume to overwrite)") from error
    _, total = _regions_done(args.output_zarr) or (0, 0)
    resumed = before[0] if before else 0
    _say(f"wrote {args.output_zarr}: embedding {dict(emb.sizes)} in {emb.rio.crs}; {total - resumed} of {total} "
         f"region(s) computed now, {resumed} already in the store ({time.perf_counter() - start:.1f} s)")
    if args.png:
        from xanysat.cube.maps import save_png

        save_png(emb, args.png, title=f"AnySat PCA, patch {args.patch_size} m")
        _say(f"wrote {args.png}")
    return EXIT_OK


def _regions_done(store) -> tuple[int, int] | None:
    """(regions marked done, regions) in an ``embed_to_zarr`` store's manifest, or None."""
    import zarr

    from xanysat.cube.zarr import DONE, MANIFEST

    try:
        done = zarr.open_array(store, path=f"{MANIFEST}/{DONE}", mode="r")[...]
    except Exception:  # no store yet, or not one of ours: embed_to_zarr says which
        return None
    return int(done.sum()), int(done.size)


def _run_plan(args) -> int:
    options = _embed_options(args)
    _require(args.throughput is None or (math.isfinite(args.throughput) and args.throughput > 0),
             f"--throughput must be a positive number of tiles per second, got {args.throughput}; e.g. "
             "--throughput 2, or leave it out to measure it on this machine.")
    _check_query(args)
    _check_model(args.model, "--model")
    from xanysat.cube.plan import plan

    cube = _cube(args, check_assets=False)
    report = plan(cube, options=options, model=args.model, throughput=args.throughput)
    print(report)
    return EXIT_OK


def _run_map(args) -> int:
    out = Path(args.output)
    _check_output_file("--output", args.output, (".png", ".tif", ".tiff"))
    emb = _open_embedding(args.zarr)

    from xanysat.cube.export import map_to_cog
    from xanysat.cube.maps import pca_rgb_map, save_png, similarity

    png = out.suffix.lower() == ".png"
    picture = similarity(emb, *args.similarity) if args.similarity else pca_rgb_map(emb, alpha=not png)
    if png:
        save_png(picture, out, title=Path(args.zarr).name)
    else:  # a tiled COG: RGBA (alpha 0 on NaN cells), or float similarity with nodata NaN
        map_to_cog(picture, out)
    _say(f"wrote {out}")
    return EXIT_OK


def _run_export(args) -> int:
    out = Path(args.output)
    _check_output_file("--output", args.output, (".tif", ".tiff"))
    emb = _open_embedding(args.zarr)

    from xanysat.cube.export import to_cog

    to_cog(emb, out, dtype=args.dtype)
    _say(f"wrote {out}: {emb.sizes['feature']} bands of {emb.sizes['y']} x {emb.sizes['x']} cells in {emb.rio.crs}")
    return EXIT_OK


def _open_embedding(store: str):
    """The ``embedding`` of a store ``xanysat embed`` wrote, with its CRS, or exit 3 naming the fix."""
    if not Path(store).exists():
        raise AnySatInputError(f"no Zarr store at {store}; write one with 'xanysat embed ... -o {store}'.")

    import rioxarray  # noqa: F401  (registers .rio, for the GeoTIFF)
    import xarray as xr

    try:
        emb = xr.open_zarr(store, decode_coords="all")["embedding"]
    except (KeyError, OSError, ValueError) as error:
        raise AnySatInputError(f"{store} holds no 'embedding' written by xanysat: {error}") from error
    if emb.rio.crs is None or set(emb.dims) != {"feature", "y", "x"}:
        raise AnySatInputError(f"{store}: its 'embedding' has no CRS or no (feature, y, x) grid; write it with "
                               "'xanysat embed' or xanysat.embed_to_zarr.")
    return emb


def _run_info(args) -> int:
    import importlib.metadata as md

    import xanysat
    from xanysat.sensors.table import MODALITIES

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
    print("  a directory written by xanysat.nn.checkpoint.save_pretrained")
    return EXIT_OK


def _base_status() -> str:
    from xanysat.nn.hub import official_checkpoint_path

    try:
        return f"available at {official_checkpoint_path(local_files_only=True)}"
    except CheckpointError:
        return "not on this machine"


# Checks: cheap (no search, no pixel, no torch), run before a command does any work.

EMBED_FLAGS = {"patch_size": "--patch-size", "output": "--output", "batch_size": "--batch-size",
               "overlap": "--overlap", "device": "--device", "dtype": "--dtype"}
MODEL_NAMES = ("base", "default", "untrained-tiny")  # xanysat.nn.hub's (tests/integration/test_cli_contract.py checks)
MODEL_FILES = ("config.json", "model.safetensors")  # what xanysat.nn.checkpoint.save_pretrained writes
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AnySatInputError(message)


def _check_count(name: str, value) -> None:
    """``value`` (when set) is a whole number of at least 1."""
    _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
             f"{name} must be a whole number of at least 1, got {value!r}.")


def _check_query(args) -> None:
    """The STAC query and cube flags of ``embed`` and ``plan``, before any request."""
    from xanysat.sensors.table import MODALITIES

    _check_url(args.stac)
    _check_crs("--crs", args.crs)
    _check_count("--max-items", args.max_items)
    for sensor, collection in args.sensor:
        _require(sensor in MODALITIES, f"--sensor {sensor}={collection}: unknown sensor {sensor!r}; known sensors: "
                                       f"{', '.join(MODALITIES)}.")
        _require(collection in args.collections, f"--sensor {sensor}={collection}: {collection!r} is not one of "
                                                 f"--collections {' '.join(args.collections)}; add it there.")
    from xanysat.stac import check_lonlat_bbox

    check_lonlat_bbox(args.bbox, fix="--bbox takes WEST SOUTH EAST NORTH in degrees (EPSG:4326).")
    if args.datetime is not None:
        _check_datetime(args.datetime)
    if args.composite is not None:
        _check_composite(args.composite)


def _check_url(url: str) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    _require((parsed.scheme in ("http", "https") and bool(parsed.netloc)) or Path(url).is_file(),
             f"--stac must be the URL of a STAC API, e.g. https://earth-search.aws.element84.com/v1, got {url!r}.")


def _check_crs(flag: str, text: str | None, *, projected: bool = True) -> None:
    """A CRS pyproj reads; with ``projected``, one in metres (patch and tile sizes are metres)."""
    if text is None:
        return
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    default = ", or leave --crs out for the items' CRS" if flag == "--crs" else ""
    try:
        crs = CRS.from_user_input(text)
    except CRSError:
        raise AnySatInputError(f"{flag} {text!r} is not a CRS pyproj knows; give an EPSG code such as "
                               f"EPSG:32631{default}.") from None
    unit = crs.axis_info[0].unit_name if crs.axis_info else None
    _require(not projected or (crs.is_projected and unit in ("metre", "meter")),
             f"{flag} {text} ({crs.name}) is not a projected CRS in metres, and patch and tile sizes are metres; "
             f"give a UTM zone such as EPSG:32631{default}.")


def _check_datetime(text: str) -> None:
    """``--datetime``: a date or an interval as STAC searches take them, start before end."""
    from pystac_client.item_search import DATETIME_REGEX

    parts = text.split("/")
    ends = [part for part in parts if part not in ("", "..")]
    valid = len(parts) <= 2 and len(ends) in (1, len(parts)) and all(_is_date(e, DATETIME_REGEX) for e in ends)
    if valid and len(ends) == 2:
        n = min(len(ends[0]), len(ends[1]), 10)
        valid = ends[0][:n] <= ends[1][:n]
    _require(valid, f"--datetime must be a date or an interval such as 2021-01-01/2021-12-31 (YYYY, YYYY-MM, "
                    f"YYYY-MM-DD or RFC 3339 date-times, '..' for an open end, start first), got {text!r}.")


def _is_date(text: str, pattern) -> bool:
    import datetime

    match = pattern.match(text)
    if not match:
        return False
    try:
        datetime.date(int(match["year"]), int(match["month"] or 1), int(match["day"] or 1))
    except ValueError:  # month 13, February 30...
        return False
    return True


def _check_composite(composite: str) -> None:
    import pandas as pd

    from xanysat.stac import COMPOSITES

    try:
        pd.tseries.frequencies.to_offset(COMPOSITES.get(composite, composite))
    except (ValueError, TypeError):
        raise AnySatInputError(f"--composite must be {', '.join(COMPOSITES)} or a pandas frequency (e.g. 2MS, 10D), "
                               f"got {composite!r}.") from None


def _check_parent(flag: str, path: Path) -> None:
    """The nearest existing folder above ``path`` is a writable folder (the rest is created on write)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    _require(parent.is_dir(), f"{flag} {path}: {parent} is a file, not a directory; give a path in a directory.")
    _require(os.access(parent, os.W_OK), f"{flag} {path}: cannot write in {parent}; give a path in a writable "
                                         "directory.")


def _check_store(flag: str, path: str) -> None:
    """A Zarr store to write: a new path, or a store to resume (or overwrite with ``--no-resume``);
    never a file, nor a directory of other things (which an overwrite would delete)."""
    store = Path(path)
    _check_parent(flag, store)
    if not store.exists():
        return
    _require(store.is_dir(), f"{flag} {path} is a file, and a Zarr store is a directory; give a new path such as "
                             f"{store.with_suffix('.zarr').name if store.suffix != '.zarr' else 'emb.zarr'}.")
    _require(not any(store.iterdir()) or any((store / name).exists() for name in ZARR_MARKERS),
             f"{flag} {path} is a directory that holds no Zarr store; give a new path such as {store / 'emb.zarr'} "
             "(an overwrite would delete what it holds).")


def _check_output_file(flag: str, path: str, suffixes: tuple[str, ...]) -> None:
    out = Path(path)
    kinds = " or ".join([", ".join(suffixes[:-1]), suffixes[-1]] if len(suffixes) > 1 else suffixes)
    _require(out.suffix.lower() in suffixes, f"{flag} must end in {kinds}, got {out.name!r}.")
    if out.suffix.lower() == ".zarr":
        _check_store(flag, path)
        return
    _require(not out.is_dir(), f"{flag} {path} is a directory; give a file path such as {out / ('map' + suffixes[0])}.")
    _check_parent(flag, out)


def _check_output_dir(flag: str, path: str | None) -> None:
    """A run directory: a folder, or a path where one can be created."""
    if path is None:
        return
    out = Path(path)
    _require(not out.exists() or out.is_dir(), f"{flag} {path} is a file; give a run directory (created if "
                                               "missing).")
    _check_parent(flag, out)


def _check_model(model: str | None, flag: str) -> None:
    """A model name or a saved model directory, else a ``CheckpointError`` (exit 4); loads nothing."""
    if model is None or model in MODEL_NAMES:
        return
    if not Path(model).is_dir():
        raise CheckpointError(f"unknown model {model!r} ({flag}): use {', '.join(map(repr, MODEL_NAMES))} or a "
                              "directory written by save_pretrained.")
    _check_model_dir(model, flag)


def _check_model_dir(path: str, flag: str) -> None:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{flag} {path} is not a directory; give a model directory written by save_pretrained "
                              "(e.g. runs/pretrain/model).")
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{flag} {path} has no {' or '.join(missing)}; expected a directory written by "
                              "xanysat.nn.checkpoint.save_pretrained.")


def _read_toml(path: str) -> dict:
    """The settings of a ``--config`` file (its keys are checked by ``config_from_settings``)."""
    import tomllib

    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise AnySatInputError(f"--config {path}: {error.strerror or error}; give the path of a TOML settings "
                               "file.") from None
    except UnicodeDecodeError:
        raise AnySatInputError(f"--config {path} is not UTF-8 text; give a TOML settings file.") from None
    except tomllib.TOMLDecodeError as error:
        raise AnySatInputError(f"--config {path} is not valid TOML ({error}); fix that line.") from None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
