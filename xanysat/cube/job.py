"""``Setup``: the whole-cube embedding job as ``embed`` resolves it, without its graph: the
prepared inputs, the geometry, the model and the options. ``plan`` and ``embed_to_zarr`` build
one; ``plan`` without statistics (it reads no pixel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from xanysat.cube.embed import check_model_sensors, dense_sensor, job_geometry
from xanysat.cube.options import EmbedOptions, describe
from xanysat.cube.prepare import Inputs, prepare
from xanysat.cube.read import Cube
from xanysat.cube.runtime import ModelRef, client_model, model_ref
from xanysat.cube.tiling import Geometry


@dataclass(frozen=True)
class Setup:
    """The whole-cube job: inputs, geometry, model and options, as ``embed`` resolves them.

    Attributes:
        inputs: the prepared ``xanysat.cube.prepare.Inputs``.
        geometry: tiles, blocks and output grid (``xanysat.cube.tiling.Geometry``).
        ref: the resolved ``xanysat.cube.runtime.ModelRef``.
        options: the ``EmbedOptions``, with ``tile_size``, ``block_tiles`` and ``overlap`` fixed
            from ``geometry`` (so a region's ``embed`` uses the whole cube's tiling).
        features: output features per cell (``2 * embed_dim`` for ``output="dense"``).
        embed_dim: the model's token width.
        num_heads: the model's attention heads.
        mlp_ratio: the model's MLP width ratio.
        output_modality: the sensor of dense outputs, else as given.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, EmbedOptions(40, tile_size=160, block_tiles=1), model="untrained-tiny")
        >>> setup.features, setup.geometry.n_tiles, setup.options.tile_size
        (256, (2, 3), (160, 160))
        >>> setup.doy("s2").tolist()  # dates every 16 days from 2021-03-01
        [60.0, 76.0, 92.0]
    """

    inputs: Inputs
    geometry: Geometry
    ref: ModelRef
    options: EmbedOptions
    features: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    output_modality: str | None

    @property
    def cube(self) -> Cube:
        """The gridded cube (sensors as read, CRS, origin, extent)."""
        return self.inputs.cube

    def doy(self, name: str) -> np.ndarray | None:
        """A sensor's dates as the day numbers the model sees (``None`` for single-date sensors)."""
        return self.inputs.sensors[name].days

    def normalized(self, name: str) -> bool:
        """Whether ``embed`` standardises this sensor (known without resolving statistics)."""
        choice = self.options.normalize
        if isinstance(choice, Mapping):
            choice = choice.get(name, True)
        return choice not in (False, None)

    def facts(self) -> dict:
        """``xanysat.cube.options.describe`` for this job (provenance and fingerprint)."""
        return describe(self.options, self.inputs, self.geometry, self.ref, self.features, self.output_modality)


def setup_job(data, options: EmbedOptions, *, model=None, statistics: bool = True) -> Setup:
    """Prepare the input and resolve tiling, model and normalisation exactly as ``embed`` does.

    Args:
        data: a gridded cube ``xanysat.embed`` accepts, or prepared ``Inputs``.
        options: the ``EmbedOptions``.
        model: as for ``embed``.
        statistics: resolve the normalisation statistics (``False`` for a plan: it reads no
            pixel, so it needs none).

    Returns:
        A ``Setup``; no pixel is read and no dask graph is built.

    Example:
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2", "s1-asc"), extent_m=(320, 480), n_dates=3)
        >>> setup = setup_job(cube, EmbedOptions(40), model="untrained-tiny", statistics=False)
        >>> setup.geometry.n_blocks, setup.inputs.sensors["s1-asc"].stats is None
        ((1, 1), True)
    """
    ref = model_ref(model, device=options.device, dtype=options.dtype)
    config = client_model(ref).config
    inputs = prepare(data, sensor=options.sensor, normalize=options.normalize, date_origin=options.date_origin,
                     model_stats=client_model(ref).card.normalization, statistics=statistics)
    if inputs.cube is None:
        raise ValueError("plan and embed_to_zarr take a gridded cube (y/x dims); for point samples use "
                         "xanysat.embed_points.")
    check_model_sensors(ref, inputs.names)
    g = job_geometry(inputs, options, ref)
    fixed = options.replace(tile_size=g.tile_m, block_tiles=g.block_tiles, overlap=g.overlap)
    features = config.embed_dim * (2 if options.output == "dense" else 1)
    return Setup(inputs, g, ref, fixed, features, config.embed_dim, config.num_heads, config.mlp_ratio,
                 dense_sensor(inputs.names, options))
