"""Grids as odc-geo ``GeoBox`` objects: each sensor's input grid, the output grid of an
embedding, and the window of a cube that lands an embedding on a grid the user already has.
"""

from __future__ import annotations

import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from xanysat.errors import DimensionError

_TOL = 1e-6


def sensor_geobox(sensor, crs: str) -> GeoBox:
    """The pixel grid of one sensor of a cube (``xanysat.cube.read.SensorCube``).

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.testing import synthetic_cube
        >>> cube = as_cube(synthetic_cube(("s2",), extent_m=(80, 120), n_dates=1))
        >>> box = sensor_geobox(cube.sensors["s2"], cube.crs)
        >>> box.shape, box.resolution.x, box.extent.boundingbox.left
        (Shape2d(x=12, y=8), 10.0, 600000.0)
    """
    res = sensor.resolution_m
    return GeoBox(sensor.shape_px, Affine(res, 0.0, sensor.origin[0], 0.0, -res, sensor.origin[1]), crs)


def output_geobox(cube, geometry) -> GeoBox:
    """The grid of an embedding: cells of ``geometry.cell_m`` from the cube's corner shifted by
    the window's offset (``geometry.offset_m``), ``geometry.out_shape`` cells.

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.cube.tiling import make_geometry
        >>> from xanysat.testing import synthetic_cube
        >>> cube = as_cube(synthetic_cube(("s2",), extent_m=(120, 80), n_dates=1))
        >>> box = output_geobox(cube, make_geometry(cube.extent_m, 40, ["s2"]))
        >>> box.shape, box.affine.c, box.affine.f
        (Shape2d(x=2, y=3), 600000.0, 5700000.0)
    """
    (ch, cw), (oy, ox) = geometry.cell_m, geometry.offset_m
    affine = Affine(cw, 0.0, cube.origin[0] + ox, 0.0, -ch, cube.origin[1] - oy)
    return GeoBox(geometry.out_shape, affine, cube.crs)


def grid_coords(geobox: GeoBox) -> dict:
    """``y``/``x`` coordinates at cell centres (odc-geo's ``xr_coords``), without the CRS variable,
    with their CF attributes (``standard_name``, ``long_name``, ``units``, ``axis``).

    Example:
        >>> box = GeoBox((2, 3), Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0), "EPSG:32631")
        >>> coords = grid_coords(box)
        >>> coords["x"][1].tolist(), coords["y"][2]["standard_name"], coords["x"][2]["units"]
        ([600005.0, 600015.0, 600025.0], 'projection_y_coordinate', 'm')
    """
    coords = xr_coords(geobox, crs_coord_name=None)
    return {dim: (dim, coords[dim].values, cf_axis_attrs(dim, geobox.crs)) for dim in ("y", "x")}


def cf_axis_attrs(dim: str, crs) -> dict:
    """CF attributes of the ``x`` or ``y`` coordinate of a grid in ``crs`` (projected: metres;
    geographic: degrees of longitude or latitude).

    Example:
        >>> cf_axis_attrs("x", "EPSG:32631")
        {'standard_name': 'projection_x_coordinate', 'long_name': 'x coordinate of projection', 'units': 'm', \
'axis': 'X'}
        >>> cf_axis_attrs("y", "EPSG:4326")["units"]
        'degrees_north'
    """
    from odc.geo.crs import CRS

    if crs is not None and CRS(crs).geographic:
        name = "longitude" if dim == "x" else "latitude"
        return {"standard_name": name, "long_name": name, "units": "degrees_east" if dim == "x" else "degrees_north",
                "axis": dim.upper()}
    return {"standard_name": f"projection_{dim}_coordinate", "long_name": f"{dim} coordinate of projection",
            "units": "m", "axis": dim.upper()}


def as_geobox(like) -> GeoBox:
    """A ``GeoBox`` from a GeoBox, or from an xarray object on a grid (odc-geo's ``.odc.geobox``).

    Raises:
        DimensionError: ``like`` has no grid odc-geo can read (no CRS or no regular x/y).
    """
    if isinstance(like, GeoBox):
        return like
    if isinstance(like, (xr.DataArray, xr.Dataset)):
        import odc.geo.xr  # noqa: F401  (registers .odc)

        box = like.odc.geobox
        if isinstance(box, GeoBox) and box.crs is not None:
            return box
    raise DimensionError(
        f"like= must be an odc.geo GeoBox or an xarray object on a regular grid with a CRS, got "
        f"{type(like).__name__}; e.g. like=other_embedding, or geobox=GeoBox.from_bbox(...)."
    )


def window_for(geobox: GeoBox, cube, cell_m: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The ``window`` (metres from the cube's corner) whose embedding has exactly the cells of
    ``geobox``.

    Args:
        geobox: the grid wanted: the cube's CRS, north-up, cells of ``cell_m``, inside the cube,
            its corner on the cube's grid of cells.
        cube: the input ``Cube``.
        cell_m: ``(height, width)`` of the embedding's cells (the patch size, the tile size, or
            the token size of a dense output).

    Returns:
        ``((y_offset, x_offset), (height, width))``.

    Raises:
        DimensionError: naming what differs and how to fix it.

    Example:
        >>> from xanysat.cube.read import as_cube
        >>> from xanysat.testing import synthetic_cube
        >>> cube = as_cube(synthetic_cube(("s2",), extent_m=(160, 160), n_dates=1))
        >>> box = GeoBox((2, 3), Affine(40, 0, 600040, 0, -40, 5699960), "EPSG:32631")
        >>> window_for(box, cube, (40.0, 40.0))
        ((40.0, 40.0), (80.0, 120.0))
    """
    from pyproj import CRS

    if not CRS.from_user_input(geobox.crs.to_wkt()).equals(CRS.from_wkt(cube.crs)):
        raise DimensionError(f"the target grid is in {geobox.crs}, the cube in {CRS.from_wkt(cube.crs).name}; "
                             "reproject one of them first.")
    a = geobox.affine
    if abs(a.b) > _TOL or abs(a.d) > _TOL or a.e >= 0:
        raise DimensionError("the target grid must be north-up without rotation (affine b = d = 0, e < 0).")
    size = (-a.e, a.a)
    if any(abs(s - c) > _TOL * c for s, c in zip(size, cell_m)):
        raise DimensionError(f"the target grid has {size[1]:g} m x {size[0]:g} m cells but this embedding has "
                             f"{cell_m[1]:g} m x {cell_m[0]:g} m cells; choose patch_size (or output) to match.")
    offset = (cube.origin[1] - a.f, a.c - cube.origin[0])
    for o, c in zip(offset, cell_m):
        if abs(o / c - round(o / c)) > _TOL:
            raise DimensionError(f"the target grid's corner is {offset[1]:g} m east and {offset[0]:g} m south of the "
                                 f"cube's, not a whole number of {c:g} m cells: the cells cannot coincide.")
    ny, nx = geobox.shape.yx
    extent = (ny * cell_m[0], nx * cell_m[1])
    if min(offset) < -_TOL or any(o + e > c + _TOL * max(1.0, c) for o, e, c in zip(offset, extent, cube.extent_m)):
        raise DimensionError("the target grid is not inside the cube; crop it, or load a larger cube.")
    return (round(offset[0], 6) + 0.0, round(offset[1], 6) + 0.0), (float(extent[0]), float(extent[1]))

