"""Exceptions raised for bad input. All are ``ValueError`` subclasses."""


class AnySatInputError(ValueError):
    """Input that xanysat cannot use; the message says what was expected and how to fix it.

    The base of ``ModalityError``, ``DimensionError``, ``PatchSizeError`` and ``StacError``:
    catch it to handle any bad input at once.

    Example:
        >>> from xanysat.testing import synthetic_batch
        >>> try:
        ...     synthetic_batch(("s2",), batch_size=0)
        ... except AnySatInputError as error:
        ...     print(error)
        batch_size must be a positive integer, got 0.
        >>> issubclass(DimensionError, AnySatInputError), issubclass(AnySatInputError, ValueError)
        (True, True)
    """


class ModalityError(AnySatInputError):
    """Unknown or unsupported sensor.

    Example:
        >>> from xanysat.sensors.table import get_modality
        >>> get_modality("s3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.ModalityError: unknown sensor 's3'. Known sensors: aerial, aerial-flair, spot, naip, s2, ...
    """


class DimensionError(AnySatInputError):
    """Wrong dims, shapes or channel counts.

    Example:
        >>> from xanysat.testing import synthetic_batch
        >>> synthetic_batch(("s2",), extent_m=65)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.DimensionError: extent_m=65 is not a whole number of 's2' pixels (10 m). ...
    """


class PatchSizeError(AnySatInputError):
    """A patch size the tile or a sensor cannot be cut into.

    Example:
        >>> from xanysat.nn.batch import check_patch_size
        >>> check_patch_size(40, (60.0, 60.0), ("s2",))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.PatchSizeError: patch_size 40 m does not divide the 60 m x 60 m tile ... Use one of [10, 20, 30, 60] ...
    """


class CheckpointError(ValueError):
    """A checkpoint that does not match the architecture, or cannot be found.

    Not an ``AnySatInputError``: the data is fine, the model is not.

    Example:
        >>> import xanysat
        >>> xanysat.load_model("no-such-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: unknown model 'no-such-model': use 'base', 'default', 'untrained-tiny' or ...
    """


class StacError(AnySatInputError):
    """A STAC API, search or asset that cannot give the requested cube.

    Example:
        >>> from xanysat.stac import check_lonlat_bbox
        >>> check_lonlat_bbox((3.0, 51.0, 2.0, 52.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.StacError: bbox (3.0, 51.0, 2.0, 52.0) is empty or inverted; expected west < east ...
    """
