"""The sensor table (plain data) and the rules derived from it: band mapping, ratio bands,
patch-size validity, the grid unit and day numbers. Imports nothing else of xanysat but ``errors``.
"""

from xanysat.sensors.table import MODALITIES, Modality, NormStats, StacSource, band_index, get_modality

__all__ = ["MODALITIES", "Modality", "NormStats", "StacSource", "band_index", "get_modality"]
