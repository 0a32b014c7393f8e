"""Exceptions raised for bad input. All are ``ValueError`` subclasses."""


class AnySatInputError(ValueError):
    """Input that xanysat cannot use; the message says what was expected and how to fix it."""


class ModalityError(AnySatInputError):
    """Unknown or unsupported sensor."""


class DimensionError(AnySatInputError):
    """Wrong dims, shapes or channel counts."""


class PatchSizeError(AnySatInputError):
    """A patch size the tile or a sensor cannot be cut into."""


class CheckpointError(ValueError):
    """A checkpoint that does not match the architecture, or cannot be found."""


class StacError(AnySatInputError):
    """A STAC API, search or asset that cannot give the requested cube."""
