"""Tile samplers over cubes and multi-dataset batch sampling: coverage, snapping, regions, seeds."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from xanysat.cube.read import as_cube
from xanysat.loaders.multi import MultiDatasetSampler, multi_dataset_batches
from xanysat.loaders.samplers import GridTileSampler, RandomTileSampler, TileQuery, grid_unit
from xanysat.testing import synthetic_cube

ORIGIN = (600_000.0, 5_700_000.0)


def s2_cube(extent=(100, 120), n_dates=2, **kwargs):
    return synthetic_cube(("s2",), extent_m=extent, n_dates=n_dates, **kwargs)


def coverage(queries, shape_px, res=10.0) -> np.ndarray:
    """How many tiles cover each pixel of a ``shape_px`` grid."""
    count = np.zeros(shape_px, int)
    for q in queries:
        (oy, ox), (h, w) = q.offset_m, q.size_m
        count[round(oy / res):round((oy + h) / res), round(ox / res):round((ox + w) / res)] += 1
    return count


# -- grid ------------------------------------------------------------------------------------


@pytest.mark.parametrize("extent, size, stride", [
    ((100, 120), 40, None),   # remainders on both axes
    ((80, 80), 40, None),     # exact fit
    ((130, 70), 40, 30),      # overlapping strides, odd remainders
    ((30, 50), 40, None),     # cube smaller than a tile along y
    ((90, 90), (20, 50), (20, 25)),
])
def test_grid_covers_every_pixel_with_the_expected_count(extent, size, stride):
    sampler = GridTileSampler(s2_cube(extent), size, stride)
    queries = list(sampler)
    sizes = (size, size) if np.isscalar(size) else size
    strides = sizes if stride is None else ((stride, stride) if np.isscalar(stride) else stride)
    expected = [max(0, math.ceil((e - s) / st)) + 1 for e, s, st in zip(extent, sizes, strides)]
    assert len(queries) == len(sampler) == expected[0] * expected[1]
    assert len(set(queries)) == len(queries)
    assert (coverage(queries, (extent[0] // 10 + 4, extent[1] // 10 + 5))[:extent[0] // 10, :extent[1] // 10] >= 1).all()
    for q in queries:
        assert q.size_m == tuple(float(s) for s in sizes)
        for axis in range(2):  # shifted back inside the cube; only a cube smaller than a tile is overrun
            if extent[axis] >= sizes[axis]:
                assert q.offset_m[axis] + q.size_m[axis] <= extent[axis]
            else:
                assert q.offset_m[axis] == 0


def test_last_row_and_column_are_shifted_back_not_dropped():
    offsets = [q.offset_m for q in GridTileSampler(s2_cube((100, 120)), 40)]
    assert sorted({y for y, _ in offsets}) == [0.0, 40.0, 60.0]
    assert sorted({x for _, x in offsets}) == [0.0, 40.0, 80.0]


def test_sizes_and_strides_snap_to_whole_pixels_of_every_sensor():
    cube = synthetic_cube(("naip", "s2"), extent_m=120, n_dates=1)
    assert grid_unit(as_cube(cube)) == 10.0
    assert GridTileSampler(cube, 44).size_m == (40.0, 40.0)
    assert GridTileSampler(cube, 45).size_m == (50.0, 50.0)
    assert GridTileSampler(cube, 3).size_m == (10.0, 10.0)   # at least one unit
    assert GridTileSampler(cube, 40, 14).stride_m == (10.0, 10.0)
    assert GridTileSampler(cube, 4, units="px").size_m == (40.0, 40.0)  # px of the coarsest sensor (s2)
    for q in GridTileSampler(cube, 50, 30):
        for res in (1.25, 10.0):
            for v in (*q.offset_m, *q.size_m):
                assert abs(v / res - round(v / res)) < 1e-9
    l7 = synthetic_cube({"s2": 1, "l7": 1}, extent_m=180)
    assert grid_unit(as_cube(l7)) == 30.0
    assert GridTileSampler(l7, 40).size_m == (30.0, 30.0)
    assert GridTileSampler(l7, 50).size_m == (60.0, 60.0)
    aligned = RandomTileSampler(cube, 40, 30, align_m=20, generator=torch.Generator().manual_seed(0))
    assert aligned.unit_m == 20.0 and all(v % 20 == 0 for q in aligned for v in q.offset_m)
    assert GridTileSampler(cube, 40, align_m=2.5).unit_m == 10.0
    with pytest.raises(ValueError, match="positive"):
        GridTileSampler(cube, 0)
    with pytest.raises(ValueError, match="units"):
        GridTileSampler(cube, 40, units="pixels")


def test_roi_is_a_bbox_in_the_crs_snapped_outwards_and_covered():
    cube = s2_cube((200, 200))
    x0, y0 = ORIGIN
    roi = (x0 + 35, y0 - 145, x0 + 152, y0 - 52)  # x 35..152 m, y 52..145 m from the corner
    sampler = GridTileSampler(cube, 40, roi=roi)
    assert sampler.roi_m == ((50.0, 150.0), (30.0, 160.0))
    queries = list(sampler)
    count = coverage(queries, (20, 20))
    assert (count[5:15, 3:16] >= 1).all()
    assert count.sum() == count[5:15, 3:16].sum()  # nothing outside the snapped roi
    assert len(queries) == 3 * 4
    # bounds round-trip in the CRS
    minx, miny, maxx, maxy = queries[0].bounds(ORIGIN)
    assert (minx, maxy) == (x0 + 30, y0 - 50) and (maxx - minx, maxy - miny) == (40, 40)
    with pytest.raises(ValueError, match="does not overlap"):
        GridTileSampler(cube, 40, roi=(x0 + 500, y0 - 100, x0 + 600, y0))
    random = list(RandomTileSampler(cube, 40, 50, roi=roi, generator=torch.Generator().manual_seed(0)))
    assert all(50 <= q.offset_m[0] <= 110 and 30 <= q.offset_m[1] <= 120 for q in random)


def test_toi_is_carried_by_queries_and_checked_against_the_dates():
    cube = s2_cube((40, 40), n_dates=5)  # 2021-03-01 every 16 days
    sampler = GridTileSampler(cube, 40, toi=("2021-03-10", "2021-04-02"))
    (q,) = list(sampler)
    assert q.time == (np.datetime64("2021-03-10", "ns"), np.datetime64("2021-04-02", "ns"))
    assert GridTileSampler(cube, 40, toi=slice("2021-04-01", None)).toi[1] is None
    with pytest.raises(ValueError, match="holds no date"):
        GridTileSampler(cube, 40, toi=("2022-01-01", "2022-02-01"))
    with pytest.raises(ValueError, match="before it starts"):
        GridTileSampler(cube, 40, toi=("2021-05-01", "2021-03-01"))


# -- random ----------------------------------------------------------------------------------


def test_random_tiles_are_seeded_inside_and_on_the_grid():
    cube = synthetic_cube(("naip", "s2"), extent_m=(200, 300), n_dates=1)

    def draw(seed, n=40):
        return [q.offset_m for q in RandomTileSampler(cube, 45, n, generator=torch.Generator().manual_seed(seed))]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    sampler = RandomTileSampler(cube, 45, 40, generator=torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 40 and first != second  # fresh tiles every iteration
    for q in first + second:
        assert q.size_m == (50.0, 50.0)
        assert 0 <= q.offset_m[0] <= 150 and 0 <= q.offset_m[1] <= 250
        assert q.offset_m[0] % 10 == 0 and q.offset_m[1] % 10 == 0
    ys = {y for y, _ in draw(2, 400)}
    assert ys == {float(v) for v in range(0, 160, 10)}  # every position can be drawn
    with pytest.raises(ValueError, match="length"):
        RandomTileSampler(cube, 40, 0)


def test_tile_query_pickles():
    import pickle

    q = TileQuery((10.0, 20.0), (40.0, 40.0), (np.datetime64("2021-01-01", "ns"), None))
    assert pickle.loads(pickle.dumps(q)) == q


# -- several datasets ------------------------------------------------------------------------


def test_multi_dataset_batches_use_each_datasets_batch_and_patch_sizes():
    sets = {"a": range(10), "b": range(7), "c": range(3)}
    sampler = MultiDatasetSampler(sets, {"a": 4, "b": 2, "c": 3}, {"a": [10, 20], "b": 30, "c": (10, 20, 40)},
                                  generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 4 + 1
    seen = {name: [] for name in sets}
    sizes = {name: [] for name in sets}
    patches = {name: set() for name in sets}
    for batch in batches:
        (name,) = {k.dataset for k in batch}
        (patch,) = {k.patch_size for k in batch}
        sizes[name].append(len(batch))
        seen[name] += [k.index for k in batch]
        patches[name].add(patch)
    assert sizes == {"a": [4, 4, 2], "b": [2, 2, 2, 1], "c": [3]}  # the dataset's batch size, remainder last
    assert {n: sorted(v) for n, v in seen.items()} == {n: list(r) for n, r in sets.items()}  # each item once
    assert patches["a"] <= {10, 20} and patches["b"] == {30} and patches["c"] <= {10, 20, 40}
    again = list(MultiDatasetSampler(sets, {"a": 4, "b": 2, "c": 3}, {"a": [10, 20], "b": 30, "c": (10, 20, 40)},
                                     generator=torch.Generator().manual_seed(0)))
    assert again == batches
    other = list(MultiDatasetSampler(sets, {"a": 4, "b": 2, "c": 3}, {"a": [10, 20], "b": 30, "c": (10, 20, 40)},
                                     generator=torch.Generator().manual_seed(1)))
    assert other != batches
    dropped = MultiDatasetSampler(sets, {"a": 4, "b": 2, "c": 3}, 10, drop_last=True)
    assert len(dropped) == 2 + 3 + 1 and all(len(b) == {"a": 4, "b": 2, "c": 3}[b[0].dataset] for b in dropped)


def test_multi_dataset_weights_set_the_proportions_and_patch_sizes_are_uniform():
    sampler = MultiDatasetSampler([range(100_000), range(100_000)], 1, [[10], [10, 20]], weights=[1, 3], length=2000,
                                  generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == 2000
    counts = Counter(b[0].dataset for b in batches)
    assert abs(counts[1] / 2000 - 0.75) < 0.04
    patch = Counter(b[0].patch_size for b in batches if b[0].dataset == 1)
    assert abs(patch[20] / counts[1] - 0.5) < 0.05


def test_multi_dataset_batches_feed_the_model():
    from xanysat.loaders.datasets import CubeDataset
    from xanysat.nn.hub import load_model

    small = synthetic_cube(("s2",), extent_m=80, n_dates=2)
    large = synthetic_cube(("s2",), extent_m=(120, 240), n_dates=3, seed=1)
    sets = {"small": CubeDataset(small, GridTileSampler(small, 40)),
            "large": CubeDataset(large, GridTileSampler(large, 120))}
    model = load_model("untrained-tiny")
    seen = Counter()
    for item in multi_dataset_batches(sets, {"small": 3, "large": 1}, {"small": [20, 40], "large": [30, 60]},
                                      generator=torch.Generator().manual_seed(0)):
        b = item.batch
        side = {"small": 4, "large": 12}[item.dataset]
        assert b["s2"].shape[-2:] == (side, side)
        assert item.patch_size in {"small": (20, 40), "large": (30, 60)}[item.dataset]
        seen[item.dataset] += b["s2"].shape[0]
        grid = side * 10 // item.patch_size
        with torch.inference_mode():
            assert model(b, item.patch_size).shape == (b["s2"].shape[0], grid, grid, 256)
    assert seen == {"small": 4, "large": 2}
    with pytest.raises(ValueError, match="dividing"):
        MultiDatasetSampler(sets, 2, {"small": 30, "large": 60})
