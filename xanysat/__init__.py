"""xanysat: the AnySat foundation model for any mix of Earth-observation sensors, on xarray and Dask."""

from xanysat.errors import AnySatInputError, CheckpointError, DimensionError, ModalityError, PatchSizeError
from xanysat.modalities import MODALITIES, Modality
from xanysat.hub import load_model
from xanysat.model import AnySat, AnySatConfig

__all__ = [
    "AnySat", "AnySatConfig", "MODALITIES", "Modality", "load_model",
    "AnySatInputError", "CheckpointError", "DimensionError", "ModalityError", "PatchSizeError",
]
__version__ = "0.1.0"
