"""xanysat: the AnySat foundation model for any mix of Earth-observation sensors, on xarray and Dask.

Importing ``xanysat`` is light: torch loads on first use of the model API.
"""

from importlib import import_module

from xanysat.errors import (
    AnySatInputError, CheckpointError, DimensionError, ModalityError, PatchSizeError, StacError,
)
from xanysat.modalities import MODALITIES, Modality

import xanysat.accessor  # noqa: F401  (registers the .anysat accessor)

_LAZY = {
    "AnySat": "xanysat.model", "AnySatConfig": "xanysat.model", "load_model": "xanysat.hub",
    "embed": "xanysat.embedding", "fit_normalization": "xanysat.normalization", "plan": "xanysat.planning",
    "embed_to_zarr": "xanysat.io", "embed_points": "xanysat.points", "predict": "xanysat.prediction",
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
