"""Torch datasets over cubes and point collections: samples equal hand-cut tiles, batches give the
model the numbers ``xanysat.embed`` / ``embed_points`` give, labels are hand-checked, and
DataLoader workers read the same samples as the main process."""

import functools

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from helpers.cubes import WORLDCEREAL, crop, doy, normalise, sensor_numpy, worldcereal_tree
from torch.utils.data import DataLoader

import xanysat
from xanysat.errors import DimensionError
from xanysat.loaders.datasets import IGNORE_INDEX, CubeDataset, IterableCubeDataset, PointDataset, collate
from xanysat.loaders.samplers import GridTileSampler, RandomTileSampler, TileQuery
from xanysat.sensors.table import MODALITIES
from xanysat.testing import synthetic_cube

MODEL = "untrained-tiny"
ORIGIN = (600_000.0, 5_700_000.0)
NAIP_STATS = ([0.0] * 4, [1.0] * 4)  # synthetic_cube draws naip around 0 +- 1
ATOL = 2e-5


@functools.lru_cache(maxsize=1)
def tiny():
    return xanysat.load_model(MODEL)


def forward(batch, patch_size, output="tile") -> np.ndarray:
    batch = {k: v for k, v in batch.items() if k != "label"}
    with torch.inference_mode():
        return tiny()(batch, patch_size, output).double().numpy()


def gappy_cube(chunks=None, naip=True):
    """s2 (5 dates) + naip, 80 x 120 m: date 1 missing over tile (0, 0), a few NaN values, a
    nodata marker, and no naip at all over tile (1, 2) (40 m tiles)."""
    sensors = {"s2": 5, "naip": 1} if naip else {"s2": 5}
    tree = synthetic_cube(sensors, extent_m=(80, 120), seed=3)
    s2 = tree["s2"]["s2"].copy()
    s2.values[1, :, 0:4, 0:4] = np.nan
    s2.values[2, 3, 1, 2] = np.nan
    s2.values[4, :, 6, 9] = -9999.0
    nodes = {"s2": s2.assign_attrs(nodata=-9999.0)}
    if naip:
        v = tree["naip"]["naip"].copy()
        v.values[:, 32:64, 64:96] = np.nan
        v.values[2, 5, 7] = np.nan
        nodes["naip"] = v
    out = {}
    for name, da in nodes.items():
        if chunks:  # given in s2 pixels; naip's are 8 times smaller
            scale = round(10 / MODALITIES[name].resolution_m)
            da = da.chunk({k: c * (scale if k in "yx" else 1) for k, c in chunks.items() if k in da.dims})
        out[name] = da.to_dataset().rio.write_crs("EPSG:32631")
    return xr.DataTree.from_dict(out)


# -- a sample is the tile cut by hand ---------------------------------------------------------


def test_sample_equals_the_tile_cut_by_hand():
    tree = gappy_cube(naip=False)
    values, days = sensor_numpy(tree, "s2")
    values[values == -9999.0] = np.nan
    norm = normalise(values, "s2")
    ds = CubeDataset(tree, GridTileSampler(tree, 40))
    assert len(ds) == 6 and ds.sensors == ("s2",)
    for i, q in enumerate(ds.queries):
        sample = ds[i]
        x = crop(norm, 10, *q.offset_m, *q.size_m)
        kept = np.isfinite(x).any(axis=(1, 2, 3))
        x = x[kept]
        assert set(sample) == {"s2", "s2_dates", "s2_mask"}
        assert sample["s2"].dtype == torch.float32 and sample["s2_mask"].dtype == torch.bool
        assert tuple(sample["s2"].shape) == x.shape == (kept.sum(), 10, 4, 4)
        np.testing.assert_array_equal(sample["s2_mask"].numpy(), np.isfinite(x))
        np.testing.assert_allclose(sample["s2"].numpy(), np.where(np.isfinite(x), x, 0), atol=1e-5)
        np.testing.assert_array_equal(sample["s2_dates"].numpy(), days[kept])
    assert ds[0]["s2"].shape[0] == 4 and ds[1]["s2"].shape[0] == 5  # date 1 left out of tile (0, 0) only
    assert not ds[5]["s2_mask"][4, :, 2, 1].any()  # the nodata pixel (row 6, col 9) is masked
    # a query need not come from the list; toi restricts the dates
    windowed = CubeDataset(tree, GridTileSampler(tree, 40, toi=("2021-03-10", "2021-04-20")))
    np.testing.assert_array_equal(windowed[1]["s2_dates"].numpy(), days[1:4])
    outside = ds[TileQuery((60.0, 100.0), (40.0, 40.0))]  # half outside: padded and masked
    assert outside["s2_mask"][:, :, 2:, :].sum() == 0 and outside["s2_mask"][:, :, :2, :2].all()


def test_model_on_collated_samples_equals_embed():
    tree = gappy_cube()
    normalize = {"s2": True, "naip": NAIP_STATS}
    emb = xanysat.embed(tree, patch_size=20, output="tile", tile_size=40, model=MODEL, normalize=normalize).values
    ds = CubeDataset(tree, GridTileSampler(tree, 40), normalize=normalize)
    samples = [ds[i] for i in range(len(ds))]
    assert "naip" not in samples[5] and all("naip" in s for s in samples[:5])
    full = collate(samples[:5])  # T = 4 for tile (0, 0), 5 elsewhere: padded
    assert tuple(full["s2"].shape) == (5, 5, 10, 4, 4) and tuple(full["naip"].shape) == (5, 4, 32, 32)
    assert list(full) == ["s2", "s2_dates", "s2_mask", "naip", "naip_mask"]
    out = forward(full, 20)
    for i, q in enumerate(ds.queries[:5]):
        ty, tx = round(q.offset_m[0] / 40), round(q.offset_m[1] / 40)
        np.testing.assert_allclose(out[i], emb[:, ty, tx], atol=ATOL)
    alone = forward(collate([samples[5]]), 20)  # the tile without naip: s2 only, as embed
    np.testing.assert_allclose(alone[0], emb[:, 1, 2], atol=ATOL)
    with pytest.raises(ValueError, match="no 'naip'"):
        collate(samples, missing="raise")
    masked = collate(samples)
    assert not masked["naip_mask"][5].any() and masked["naip"][5].abs().sum() == 0


# -- labels -----------------------------------------------------------------------------------


def label_raster(values, res, corner=ORIGIN, nodata=None, crs="EPSG:32631"):
    ny, nx = values.shape
    da = xr.DataArray(values, dims=("y", "x"), coords={"y": corner[1] - (np.arange(ny) + 0.5) * res,
                                                       "x": corner[0] + (np.arange(nx) + 0.5) * res})
    if nodata is not None:
        da = da.assign_attrs(nodata=nodata)
    return da.rio.write_crs(crs) if crs else da


def test_segmentation_labels_from_a_coarser_raster_with_another_corner():
    tree = gappy_cube(naip=False)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 5, (5, 7)).astype("uint8")  # 20 m pixels from 20 m above-left of the cube
    raw[2, 4] = 255
    labels = label_raster(raw, 20, (ORIGIN[0] - 20, ORIGIN[1] + 20), nodata=255)
    ds = CubeDataset(tree, GridTileSampler(tree, 40), labels=labels)
    tile = ds[TileQuery((40.0, 40.0), (40.0, 40.0))]["label"]
    assert tile.dtype == torch.int64
    expected = raw[3:5, 3:5].astype("int64")  # rows/cols (40 + 20) / 20 = 3 ..
    np.testing.assert_array_equal(tile.numpy(), expected)
    shifted = ds[TileQuery((20.0, 60.0), (40.0, 40.0))]["label"].numpy()  # rows 2..3, cols 4..5, one nodata
    np.testing.assert_array_equal(shifted, [[IGNORE_INDEX, raw[2, 5]], [raw[3, 4], raw[3, 5]]])
    beyond = ds[TileQuery((60.0, 100.0), (40.0, 40.0))]["label"].numpy()  # rows 4..5, cols 6..7: raster ends
    np.testing.assert_array_equal(beyond, [[raw[4, 6], IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]])
    fine = label_raster(np.arange(16 * 24).reshape(16, 24) % 7, 5)  # 5 m labels on the cube's corner
    patch = CubeDataset(tree, GridTileSampler(tree, 40), labels=fine)[1]["label"]
    np.testing.assert_array_equal(patch.numpy(), (np.arange(16 * 24).reshape(16, 24) % 7)[0:8, 8:16])
    with pytest.raises(DimensionError, match="line up"):
        CubeDataset(tree, GridTileSampler(tree, 40), labels=label_raster(raw, 20, (ORIGIN[0] - 5, ORIGIN[1])))
    with pytest.raises(DimensionError, match="reproject"):
        CubeDataset(tree, GridTileSampler(tree, 40), labels=label_raster(raw, 20, crs="EPSG:32632"))


def test_classification_and_multilabel_from_a_raster():
    tree = gappy_cube(naip=False)
    raw = np.array([[1, 1, 2, 2, 0, 0],
                    [1, 3, 2, 3, 9, 9],
                    [4, 4, 5, 5, 5, 5],
                    [4, 9, 5, 5, 6, 9]])  # 20 m pixels; 9 = nodata
    labels = label_raster(raw, 20, nodata=9)
    cls = CubeDataset(tree, GridTileSampler(tree, 40), labels=labels, label_kind="classification")
    assert [int(cls[i]["label"]) for i in range(6)] == [1, 2, 0, 4, 5, 5]  # majority, ties to the smallest id
    multi = CubeDataset(tree, GridTileSampler(tree, 40), labels=labels, label_kind="multilabel", num_classes=7)
    assert multi[0]["label"].tolist() == [0, 1, 0, 1, 0, 0, 0]
    assert multi[5]["label"].tolist() == [0, 0, 0, 0, 0, 1, 1]
    none = CubeDataset(tree, GridTileSampler(tree, 40), labels=label_raster(np.full((4, 6), 9), 20, nodata=9),
                       label_kind="multilabel", num_classes=3)
    assert none[0]["label"].tolist() == [IGNORE_INDEX] * 3
    with pytest.raises(ValueError, match="num_classes"):
        CubeDataset(tree, GridTileSampler(tree, 40), labels=labels, label_kind="multilabel")


def test_classification_and_multilabel_from_points():
    tree = gappy_cube(naip=False)
    x0, y0 = ORIGIN
    points = pd.DataFrame({
        "x": [x0 + 5, x0 + 15, x0 + 25, x0 + 40, x0 + 110, x0 + 60],
        "y": [y0 - 5, y0 - 15, y0 - 25, y0 - 10, y0 - 75, y0 - 60],
        "label": [2, 1, 1, 3, 0, 4],
        "radius": [0, 0, 0, 0, 0, 25],  # a disc of 25 m around (60, 60) m from the corner
    })
    ds = CubeDataset(tree, GridTileSampler(tree, 40), labels=points)  # default: classification
    labels = [int(ds[i]["label"]) for i in range(6)]
    # (0,0): 2, 1, 1 -> 1 (the disc is 28 m from its corner); (0,1): 3 on its left edge (x = 40 m
    # belongs to the right tile) and the disc (20 m away) -> tie, smallest id; (0,2): nothing;
    # (1,0), (1,1): the disc; (1,2): 0 and the disc -> 0
    assert labels == [1, 3, IGNORE_INDEX, 4, 4, 0]
    multi = CubeDataset(tree, GridTileSampler(tree, 40), labels=points, label_kind="multilabel", num_classes=5)
    assert multi[0]["label"].tolist() == [0, 1, 1, 0, 0]
    assert multi[1]["label"].tolist() == [0, 0, 0, 1, 1]
    assert multi[2]["label"].tolist() == [IGNORE_INDEX] * 5
    hot = points.assign(label=[np.eye(5, dtype=int)[v] for v in points["label"]])
    hot_ds = CubeDataset(tree, GridTileSampler(tree, 40), labels=hot, label_kind="multilabel")
    assert all(hot_ds[i]["label"].tolist() == multi[i]["label"].tolist() for i in range(6))
    batch = collate([multi[0], multi[1]])
    assert tuple(batch["label"].shape) == (2, 5)
    with pytest.raises(ValueError, match="segmentation|label_kind"):
        CubeDataset(tree, GridTileSampler(tree, 40), labels=points, label_kind="segmentation")
    with pytest.raises(ValueError, match="columns"):
        CubeDataset(tree, GridTileSampler(tree, 40), labels=points.drop(columns="label"))


# -- collate ----------------------------------------------------------------------------------


def test_collate_pads_dates_and_padding_does_not_change_the_model_output():
    rng = torch.Generator().manual_seed(0)

    def sample(t, with_naip=True):
        out = {"s2": torch.randn(t, 10, 2, 2, generator=rng), "s2_dates": torch.arange(1.0, t + 1) * 20,
               "s2_mask": torch.ones(t, 10, 2, 2, dtype=torch.bool)}
        out["s2_mask"][0, :3, 0, 0] = False
        if with_naip:
            out["naip"] = torch.randn(4, 16, 16, generator=rng)
            out["naip_mask"] = torch.ones(4, 16, 16, dtype=torch.bool)
        out["label"] = torch.tensor(t)
        return out

    samples = [sample(3), sample(1), sample(5)]
    batch = collate(samples)
    assert tuple(batch["s2"].shape) == (3, 5, 10, 2, 2) and tuple(batch["naip"].shape) == (3, 4, 16, 16)
    assert batch["s2_dates"].tolist() == [[20, 40, 60, 0, 0], [20, 0, 0, 0, 0], [20, 40, 60, 80, 100]]
    assert batch["s2_mask"].any(dim=(2, 3, 4)).tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4, [True] * 5]
    assert batch["s2"][0, 3:].abs().sum() == 0 and batch["label"].tolist() == [3, 1, 5]
    out = forward(batch, 20)
    for i, s in enumerate(samples):
        np.testing.assert_allclose(out[i], forward(collate([s]), 20)[0], atol=ATOL)
    mixed = [sample(2), sample(2, with_naip=False)]
    assert not collate(mixed)["naip_mask"][1].any()
    with pytest.raises(ValueError, match="no 'naip'"):
        collate(mixed, missing="raise")
    small = sample(2)
    small["s2"], small["s2_mask"] = small["s2"][..., :1], small["s2_mask"][..., :1]
    with pytest.raises(DimensionError, match="one size"):
        collate([sample(2), small])


# -- DataLoader workers -----------------------------------------------------------------------


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_dataloader_workers_read_the_same_samples_from_a_dask_cube():
    tree = gappy_cube(chunks={"time": 2, "y": 3, "x": 5})
    assert tree["s2"]["s2"].chunks is not None
    labels = label_raster(np.arange(4 * 6).reshape(4, 6) % 5, 20)
    ds = CubeDataset(tree, GridTileSampler(tree, 40, stride=20), labels=labels,
                     normalize={"s2": True, "naip": NAIP_STATS})
    serial = list(DataLoader(ds, batch_size=3, collate_fn=collate))
    parallel = list(DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2))
    assert len(serial) == 5  # 3 x 5 tiles of 40 m every 20 m
    assert_same_batches(serial, parallel)
    in_memory = CubeDataset(gappy_cube(), GridTileSampler(tree, 40, stride=20), labels=labels,
                            normalize={"s2": True, "naip": NAIP_STATS})
    assert_same_batches(serial, list(DataLoader(in_memory, batch_size=3, collate_fn=collate)))

    def refuse(*args, **kwargs):
        raise AssertionError("a sample read used the global dask scheduler")

    with dask.config.set(scheduler=refuse):
        assert "s2" in ds[0]
    # random tiles chosen in the main process: identical whatever the workers (on the labels' 20 m grid)
    with pytest.raises(DimensionError, match="align_m=20"):
        CubeDataset(tree, RandomTileSampler(tree, 40, 6, generator=torch.Generator().manual_seed(0)), labels=labels,
                    normalize=False)
    with pytest.raises(DimensionError, match="align_m=20"):
        IterableCubeDataset(tree, RandomTileSampler(tree, 40, 6), labels=labels, normalize=False)

    def random_loader(workers):
        sampler = RandomTileSampler(tree, 40, 6, align_m=20, generator=torch.Generator().manual_seed(5))
        return list(DataLoader(ds, sampler=sampler, batch_size=2, collate_fn=collate, num_workers=workers))
    assert_same_batches(random_loader(0), random_loader(2))


def test_dataloader_workers_reopen_a_netcdf_backed_cube(tmp_path):
    tree = gappy_cube(naip=False)
    path = tmp_path / "s2.nc"
    tree["s2"].to_dataset().to_netcdf(path, engine="h5netcdf")
    ds_file = xr.open_dataset(path, engine="h5netcdf", decode_coords="all")
    assert ds_file["s2"].chunks is None  # lazily indexed file, not dask
    data = CubeDataset(ds_file, GridTileSampler(ds_file, 40))
    first = data[0]  # the file is open in this process before the workers fork
    serial = list(DataLoader(data, batch_size=2, collate_fn=collate))
    parallel = list(DataLoader(data, batch_size=2, collate_fn=collate, num_workers=2))
    assert_same_batches(serial, parallel)
    torch.testing.assert_close(first["s2"], CubeDataset(tree, GridTileSampler(tree, 40))[0]["s2"])
    ds_file.close()


def test_iterable_dataset_splits_queries_between_workers():
    tree = gappy_cube(chunks={"y": 4, "x": 4}, naip=False)
    grid = IterableCubeDataset(tree, GridTileSampler(tree, 20))

    def keys(samples):
        return sorted(tuple(s["s2"][0, 0, 0].tolist()) for s in samples)

    serial = list(DataLoader(grid, batch_size=None))
    parallel = list(DataLoader(grid, batch_size=None, num_workers=2))
    assert len(serial) == len(parallel) == len(grid) == 24
    assert keys(serial) == keys(parallel)
    sampler = RandomTileSampler(tree, 40, 8, generator=torch.Generator().manual_seed(0))
    stream = IterableCubeDataset(tree, sampler)
    loader = DataLoader(stream, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(1))
    epoch1, epoch2 = keys(loader), keys(loader)
    assert len(epoch1) == 8 and epoch1 != epoch2  # one random stream per epoch, shared by the workers


# -- point collections ------------------------------------------------------------------------


def point_collection(n=6, t=5, seed=0):
    """s2 ``(sample, obs, band)`` with per-sample dates (NaT padding), NaN values, class names."""
    rng = np.random.default_rng(seed)
    m = MODALITIES["s2"]
    values = (np.asarray(m.norm.mean) + np.asarray(m.norm.std) * rng.standard_normal((n, t, 10))).astype("float32")
    days = np.sort(rng.choice(365, (n, t)), axis=1)
    times = np.datetime64("2021-01-01", "ns") + days * np.timedelta64(1, "D")
    times[1, 3:] = np.datetime64("NaT")
    values[1, 3:] = np.nan
    values[2, 1] = np.nan       # a whole observation missing
    values[3, 2, 4] = np.nan    # one band missing
    return xr.Dataset({"s2": (("sample", "obs", "band"), values)},
                      coords={"time": (("sample", "obs"), times), "band": list(m.bands),
                              "crop": ("sample", ["wheat", "maize", "", "wheat", "rape", "maize"][:n])})


def test_point_dataset_samples_labels_and_model_match_embed_points():
    points = point_collection()
    ds = PointDataset(points, labels="crop")
    assert len(ds) == 6 and ds.patch_size == 10 and ds.classes == ["maize", "rape", "wheat"]
    assert [int(ds[i]["label"]) for i in range(6)] == [2, 0, IGNORE_INDEX, 2, 1, 0]
    values, times = points["s2"].values, points["time"].values
    for i in range(6):
        s = ds[i]
        x = normalise(values[i].astype("float64")[..., None, None], "s2")[..., 0, 0]
        kept = ~np.isnat(times[i]) & np.isfinite(x).any(axis=1)
        assert tuple(s["s2"].shape) == (kept.sum(), 10, 1, 1)
        np.testing.assert_array_equal(s["s2_dates"].numpy(), doy(times[i][kept]))
        np.testing.assert_array_equal(s["s2_mask"].numpy()[..., 0, 0], np.isfinite(x[kept]))
        np.testing.assert_allclose(s["s2"].numpy()[..., 0, 0], np.nan_to_num(x[kept]), atol=1e-5)
    assert ds[1]["s2"].shape[0] == 3 and ds[2]["s2"].shape[0] == 4
    out = forward(collate([ds[i] for i in range(6)]), ds.patch_size)
    expected = xanysat.embed_points(points, model=MODEL).values
    np.testing.assert_allclose(out, expected, atol=ATOL)
    given = PointDataset(points, labels="crop", classes=["wheat", "maize", "rape"])
    assert int(given[4]["label"]) == 2
    hot = PointDataset(points, labels=np.eye(3, dtype=int)[[0, 1, 2, 0, 1, 2]])
    assert hot[4]["label"].tolist() == [0, 1, 0]


def test_point_dataset_on_real_worldcereal_pixels():
    if not WORLDCEREAL.is_file():
        pytest.skip(f"WorldCereal fixture {WORLDCEREAL} not present")
    ds = xr.open_dataset(WORLDCEREAL, engine="h5netcdf").rename(t="time")
    crops = xr.open_dataset(WORLDCEREAL.with_name("worldcereal_croptype_classification.nc"), engine="h5netcdf")
    crop_ids = crops["__xarray_dataarray_variable__"].sel(bands="classification").values
    rare = np.flatnonzero(crop_ids.ravel() != 3)[:8]
    common = np.random.default_rng(0).choice(np.flatnonzero(crop_ids.ravel() == 3), 16, replace=False)
    flat = np.concatenate([rare, common])
    iy, ix = np.unravel_index(flat, crop_ids.shape)
    names = [v for v in ds.data_vars if str(v).startswith("S2-L2A-")]
    s2 = (ds[names].to_dataarray("band").assign_coords(band=[v.removeprefix("S2-L2A-") for v in names])
          .drop_vars("crs", errors="ignore"))
    picked = s2.isel(y=xr.DataArray(iy, dims="sample"), x=xr.DataArray(ix, dims="sample"))
    picked = picked.assign_coords(crop=("sample", crop_ids[iy, ix])).rename("s2").assign_attrs(nodata=65535)
    with pytest.warns(UserWarning, match="B8A"):
        data = PointDataset(picked, labels="crop")
    assert [int(data[i]["label"]) for i in range(len(data))] == crop_ids[iy, ix].tolist()
    samples = [data[i] for i in range(len(data))]
    assert all("s2" in s for s in samples)
    assert not samples[0]["s2_mask"][:, 7].any()  # B8A absent from the file: masked everywhere
    out = forward(collate(samples), data.patch_size)
    with pytest.warns(UserWarning, match="B8A"):
        expected = xanysat.embed_points(picked, model=MODEL).values
    np.testing.assert_allclose(out, expected, atol=ATOL)


@pytest.mark.slow
def test_cube_dataset_on_the_real_worldcereal_cube_with_crop_type_labels():
    tree = worldcereal_tree(y=slice(0, 40), x=slice(0, 40))
    crops = xr.open_dataset(WORLDCEREAL.with_name("worldcereal_croptype_classification.nc"), engine="h5netcdf")
    labels = crops["__xarray_dataarray_variable__"].sel(bands="classification", drop=True)
    with pytest.warns(UserWarning, match="B8A"):
        normalize = {"s2": True, "s1-asc": xanysat.fit_normalization(tree)["s1-asc"]}
    with pytest.warns(UserWarning, match="B8A"):
        ds = CubeDataset(tree, GridTileSampler(tree, 200), labels=labels, normalize=normalize)
    assert len(ds) == 4 and ds.sensors == ("s2", "s1-asc")
    raw = labels.values
    for i, q in enumerate(ds.queries):
        r, c = round(q.offset_m[0] / 10), round(q.offset_m[1] / 10)
        np.testing.assert_array_equal(ds[i]["label"].numpy(), raw[r:r + 20, c:c + 20])
    with pytest.warns(UserWarning, match="B8A"):
        emb = xanysat.embed(tree, patch_size=40, output="tile", tile_size=200, model=MODEL, normalize=normalize).values
    out = forward(collate([ds[0], ds[3]]), 40)
    np.testing.assert_allclose(out[0], emb[:, 0, 0], atol=ATOL)
    np.testing.assert_allclose(out[1], emb[:, 1, 1], atol=ATOL)
