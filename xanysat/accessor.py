"""The ``.anysat`` accessor on DataTree, Dataset and DataArray: forwarding only.

``ds.anysat.embed(...)`` is ``xanysat.embed(ds, ...)``; on an embedding cube,
``emb.anysat.pca_rgb()`` and ``emb.anysat.similarity(...)`` are ``xanysat.cube.maps`` functions.
"""

from __future__ import annotations

import functools

import xarray as xr


def _forward(function_path: str):
    module, name = function_path.rsplit(".", 1)

    def method(self, *args, **kwargs):
        from importlib import import_module

        return getattr(import_module(module), name)(self._obj, *args, **kwargs)

    method.__name__ = name

    def wrap(stub):
        functools.update_wrapper(method, stub)
        method.__doc__ = f"Same as ``{function_path}(obj, ...)``; see its documentation."
        return method

    return wrap


class AnySatAccessor:
    """``obj.anysat``: AnySat embeddings and maps for xarray objects.

    Registered on ``xr.DataTree``, ``xr.Dataset`` and ``xr.DataArray`` when ``xanysat`` is
    imported. Every method forwards ``obj`` as the first argument of the function it names:
    ``embed``, ``embed_points``, ``predict``, ``plan``, ``embed_to_zarr``,
    ``fit_normalization`` on a cube; ``pca_rgb``, ``similarity``, ``to_png``, ``to_cog`` on an embedding.

    Args:
        obj: the xarray object the accessor is attached to.

    Example:
        >>> import numpy as np, xanysat
        >>> from xanysat.testing import synthetic_cube
        >>> cube = synthetic_cube(("s2",), extent_m=(120, 80), n_dates=3)
        >>> emb = cube.anysat.embed(patch_size=40, model="untrained-tiny")
        >>> emb.dims, emb.shape
        (('feature', 'y', 'x'), (256, 3, 2))
        >>> np.array_equal(emb.values, xanysat.embed(cube, 40, model="untrained-tiny").values)
        True
        >>> rgb = emb.anysat.pca_rgb()
        >>> rgb.dims, rgb.shape, str(rgb.dtype)
        (('y', 'x', 'rgb'), (3, 2, 3), 'uint8')
    """

    def __init__(self, obj):
        self._obj = obj

    def embed(self, *args, **kwargs):
        """Same as ``xanysat.embed(obj, ...)``; for point samples (a ``sample`` dim), the same
        as ``xanysat.embed_points(obj, ...)``."""
        from xanysat.cube.embed import embed
        from xanysat.cube.points import embed_points

        if not isinstance(self._obj, xr.DataTree) and "sample" in self._obj.dims:
            return embed_points(self._obj, *args, **kwargs)
        return embed(self._obj, *args, **kwargs)

    @_forward("xanysat.cube.predict.predict")
    def predict(self, *args, **kwargs): ...

    @_forward("xanysat.cube.points.embed_points")
    def embed_points(self, *args, **kwargs): ...

    @_forward("xanysat.cube.plan.plan")
    def plan(self, *args, **kwargs): ...

    @_forward("xanysat.cube.zarr.embed_to_zarr")
    def embed_to_zarr(self, *args, **kwargs): ...

    @_forward("xanysat.cube.fit.fit_normalization")
    def fit_normalization(self, *args, **kwargs): ...

    @_forward("xanysat.cube.maps.pca_rgb_map")
    def pca_rgb(self, *args, **kwargs): ...

    @_forward("xanysat.cube.maps.similarity")
    def similarity(self, *args, **kwargs): ...

    @_forward("xanysat.cube.maps.save_png")
    def to_png(self, *args, **kwargs): ...

    @_forward("xanysat.cube.export.to_cog")
    def to_cog(self, *args, **kwargs): ...


for _register in (xr.register_dataset_accessor, xr.register_dataarray_accessor, xr.register_datatree_accessor):
    _register("anysat")(AnySatAccessor)
