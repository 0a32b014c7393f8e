"""xanysat: the AnySat foundation model for any mix of Earth-observation sensors, on xarray and Dask.

Importing ``xanysat`` is light: torch loads on first use of the model API.
"""

from importlib import import_module

import xanysat.accessor  # noqa: F401  (registers the .anysat accessor)
from xanysat.errors import AnySatInputError, CheckpointError, DimensionError, ModalityError, PatchSizeError, StacError
from xanysat.sensors.table import MODALITIES, Modality

_LAZY = {
    "AnySat": "xanysat.nn.encoder", "AnySatConfig": "xanysat.nn.encoder", "load_model": "xanysat.nn.hub",
    "embed": "xanysat.cube.embed", "fit_normalization": "xanysat.cube.fit", "plan": "xanysat.cube.plan",
    "embed_to_zarr": "xanysat.cube.zarr", "embed_points": "xanysat.cube.points", "predict": "xanysat.cube.predict",
}

__all__ = [
    "AnySat", "AnySatConfig", "MODALITIES", "Modality", "load_model",
    "embed", "embed_points", "embed_to_zarr", "fit_normalization", "plan", "predict",
    "AnySatInputError", "CheckpointError", "DimensionError", "ModalityError", "PatchSizeError", "StacError",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xanysat' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
