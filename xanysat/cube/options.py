"""``EmbedOptions``: the embed settings, one frozen object shared by ``embed``, ``plan``,
``embed_to_zarr``, ``predict`` and the CLI; provenance attrs and the Zarr fingerprint are both
written from it (``describe``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from xanysat.cube.normalize import check_normalize
from xanysat.cube.tiling import OUTPUTS
from xanysat.errors import AnySatInputError
from xanysat.sensors.rules import check_patch_size, parse_date_origin
from xanysat.sensors.table import NormStats

DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EmbedOptions:
    """How to embed a cube (everything but the model and the data).

    Attributes:
        patch_size: patch side in metres, a multiple of 10.
        output: ``"patch"``, ``"tile"`` or ``"dense"``.
        tile_size: the model's context in metres (``None``: the model's training tile where it
            records one, else up to 32 x 32 patches), or ``(height, width)``.
        overlap: halo in metres around each tile, cropped after the forward.
        window: ``((y_offset, x_offset), (height, width))`` in metres: embed only this part.
        batch_size: tiles per forward.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``...
        dtype: ``None`` (the device's default), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        normalize: ``True``, ``False`` or a mapping sensor -> ``NormStats`` / ``(mean, std)`` / bool.
        output_modality: the sensor of a ``"dense"`` output.
        block_tiles: tiles per output chunk side (``None``: by memory).
        sensor: the sensor of a single-sensor input that does not name it.
        date_origin: ``None`` (day of year) or the date day numbers count from.

    Example:
        >>> from dask.base import tokenize
        >>> options = EmbedOptions(patch_size=40, normalize={"s1": ([0, 0, 0], [1, 1, 1])})
        >>> options.replace(overlap=40).overlap, tokenize(options) == tokenize(EmbedOptions(40, normalize=
        ...     {"s1": ([0, 0, 0], [1, 1, 1])}))
        (40, True)
        >>> EmbedOptions(batch_size=0)
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: batch_size must be a positive whole number of tiles, got 0.
    """

    patch_size: int = 40
    output: str = "patch"
    tile_size: int | tuple[int, int] | None = None
    overlap: int = 0
    window: tuple | None = None
    batch_size: int = 16
    device: str = "auto"
    dtype: str | None = None
    normalize: bool | Mapping = True
    output_modality: str | None = None
    block_tiles: int | tuple[int, int] | None = None
    sensor: str | None = None
    date_origin: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "patch_size", check_patch_size(self.patch_size, ()))
        if self.output not in OUTPUTS:
            extra = " (for output='all', embed twice: 'tile' and 'patch')" if self.output == "all" else ""
            raise AnySatInputError(f"output must be one of {OUTPUTS}{extra}, got {self.output!r}.")
        if not _whole(self.batch_size) or self.batch_size < 1:
            raise AnySatInputError(f"batch_size must be a positive whole number of tiles, got {self.batch_size!r}.")
        if not _whole(self.overlap) or self.overlap < 0:
            raise AnySatInputError(f"overlap must be a non-negative whole number of metres, got {self.overlap!r}.")
        if not isinstance(self.device, str):
            raise AnySatInputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")
        check_device(self.device)
        check_dtype(self.dtype)
        check_normalize(self.normalize)
        origin = parse_date_origin(self.date_origin)
        object.__setattr__(self, "date_origin", None if origin is None else str(origin))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "overlap", int(self.overlap))

    @classmethod
    def from_kwargs(cls, patch_size=40, output="patch", **kwargs) -> EmbedOptions:
        """Options from ``embed``'s keyword arguments; an unknown one is a ``TypeError`` listing them.

        Example:
            >>> EmbedOptions.from_kwargs(40, tile=160)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
                ...
            TypeError: unexpected options ['tile']; expected some of tile_size, overlap, window, ...
        """
        names = [f.name for f in fields(cls)][2:]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"unexpected options {unknown}; expected some of {', '.join(names)}.")
        return cls(patch_size, output, **kwargs)

    def replace(self, **changes) -> EmbedOptions:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def __dask_tokenize__(self):
        return (type(self).__name__, repr(_plain(asdict(self))))


def check_device(device) -> str:
    """A device name xanysat can run on: ``"auto"``, ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``
    (or a ``torch.device`` of these); ``None`` is ``"auto"``.

    Returns:
        The device name.

    Raises:
        AnySatInputError: any other device.

    Example:
        >>> check_device("cuda:1"), check_device(None)
        ('cuda:1', 'auto')
        >>> check_device("tpu")
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'.
    """
    if device is None:
        return "auto"
    name = str(device) if type(device).__module__ == "torch" else device
    kind, _, index = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not (name in ("auto", "cpu", "mps") or (kind == "cuda" and (index == "" or index.isdigit()))):
        raise AnySatInputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return name


def check_dtype(dtype) -> None:
    """Refuse a dtype other than ``None``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or their torch dtypes).

    Example:
        >>> check_dtype("bfloat16")
        >>> check_dtype("float64")
        Traceback (most recent call last):
            ...
        xanysat.errors.AnySatInputError: dtype must be None or one of float32, bfloat16, float16, got 'float64'.
    """
    if dtype is not None and str(dtype).removeprefix("torch.") not in DTYPE_NAMES:
        raise AnySatInputError(f"dtype must be None or one of {', '.join(DTYPE_NAMES)}, got {dtype!r}.")


def describe(options: EmbedOptions, inputs, geometry, ref, features: int, output_modality) -> dict:
    """The facts an embedding depends on and is described by, from one place: the output's
    provenance attrs (``attrs``) and a Zarr store's fingerprint (``fingerprint``) are both views
    of this dict.

    Args:
        options: the ``EmbedOptions``.
        inputs: the prepared ``xanysat.cube.prepare.Inputs``.
        geometry: the job's ``xanysat.cube.tiling.Geometry``.
        ref: the ``xanysat.cube.runtime.ModelRef``.
        features: output features per cell.
        output_modality: the sensor of a dense output, else None.

    Returns:
        A JSON-serialisable dict.
    """
    from pyproj import CRS

    cube = inputs.cube
    return {
        "model_id": ref.model_id, "weights": ref.weights, "dtype": ref.dtype, "features": features,
        "patch_size_m": geometry.patch_size, "output": geometry.output, "output_modality": output_modality,
        "tile_size_m": list(geometry.tile_m), "overlap_m": geometry.overlap,
        "block_tiles": list(geometry.block_tiles),
        "grid": {"crs": CRS.from_wkt(cube.crs).to_string(), "origin": [round(o, 3) for o in cube.origin],
                 "extent_m": list(geometry.extent_m), "cell_m": list(geometry.cell_m),
                 "shape": list(geometry.out_shape)},
        "sensors": {n: {"bands": list(s.read.bands), "missing_bands": list(s.absent),
                        "resolution_m": s.read.resolution_m, "shape_px": list(s.read.shape_px),
                        "nodata": s.read.nodata,
                        "dates": None if s.read.dates is None else [str(t) for t in s.read.dates.astype("datetime64[s]")]}
                    for n, s in inputs.sensors.items()},
        "normalization": inputs.normalization(),
        "date_origin": options.date_origin,
        "dates": inputs.dates,
    }


FINGERPRINT_KEYS = ("weights", "dtype", "features", "patch_size_m", "output", "output_modality", "tile_size_m",
                    "overlap_m", "block_tiles", "grid", "sensors", "normalization", "date_origin")


def fingerprint(facts: dict, identity: Mapping[str, str]) -> dict:
    """What a store's values depend on (a resumed run must match it key by key): ``describe``'s
    facts without the readable-only ones, statistics without their source, and the identity of
    the input's pixels.

    Args:
        facts: ``describe``'s dict.
        identity: sensor -> token of its pixels (``xanysat.cube.prepare.Inputs.identity``).

    Returns:
        A JSON-serialisable dict; its ``"input"`` is ``identity``.

    Example:
        >>> from xanysat.cube.job import setup_job
        >>> from xanysat.testing import synthetic_cube
        >>> setup = setup_job(synthetic_cube(("s2",), extent_m=80, n_dates=2), EmbedOptions(40), model="untrained-tiny")
        >>> fp = fingerprint(setup.facts(), setup.inputs.identity())
        >>> sorted(fp) == sorted(FINGERPRINT_KEYS + ("input",)), list(fp["input"])
        (True, ['s2'])
    """
    out = {k: facts[k] for k in FINGERPRINT_KEYS}
    out["normalization"] = {n: None if v is None else {"mean": v["mean"], "std": v["std"]}
                            for n, v in facts["normalization"].items()}
    out["sensors"] = {n: {k: v for k, v in s.items() if k != "missing_bands"} for n, s in facts["sensors"].items()}
    out["input"] = dict(identity)
    return strict_json(out)


def attrs(facts: dict, inputs) -> dict:
    """The output's provenance attrs (strings, numbers and lists; JSON strings for nested values)."""
    import xanysat

    out = {
        "long_name": "AnySat embedding",
        "model_id": facts["model_id"],
        "weights_sha256_16": facts["weights"],
        "patch_size_m": facts["patch_size_m"],
        "output": facts["output"],
        "tile_size_m": facts["tile_size_m"],
        "overlap_m": facts["overlap_m"],
        **inputs.provenance(),
        "missing_data": "NaN/nodata pixels and absent bands masked; cells with no valid input are NaN",
        "xanysat_version": xanysat.__version__,
    }
    if facts["date_origin"] is not None:
        out["date_origin"] = facts["date_origin"]
    if facts["output"] == "dense":
        out["output_modality"] = facts["output_modality"]
    return strict_json(out)


def strict_json(value):
    """``value`` with every non-finite float (NaN, infinities: no JSON token, and GDAL and other
    strict readers refuse them) replaced by its name as a string, in nested dicts and lists.

    Example:
        >>> import json
        >>> json.dumps(strict_json({"nodata": float("nan"), "bands": [1.5, float("-inf")]}), allow_nan=False)
        '{"nodata": "NaN", "bands": [1.5, "-Infinity"]}'
    """
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(strict_json(v) for v in value)
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer, float, np.floating)) \
        and float(value).is_integer()


def _plain(value):
    if isinstance(value, NormStats):
        return ("NormStats", value.mean, value.std, value.source)
    if isinstance(value, Mapping):
        return sorted((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
