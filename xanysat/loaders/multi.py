"""Several datasets behind one loader (SPEC section 5, GeoPlex): each batch from one dataset,
at one of its patch sizes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from xanysat.loaders.datasets import collate

__all__ = ["MultiBatch", "MultiDataset", "MultiDatasetSampler", "MultiIndex", "collate_multi", "multi_dataset_batches"]


class MultiIndex(NamedTuple):
    """One sample of a multi-dataset batch: which dataset, which item, at which patch size.

    Attributes:
        dataset: the dataset's name (or position).
        index: the item's index in that dataset.
        patch_size: patch size in metres drawn for the item's batch.

    Example:
        >>> key = MultiIndex("pastis", 7, 40)
        >>> key.dataset, key.index, key.patch_size
        ('pastis', 7, 40)
    """

    dataset: str | int
    index: int
    patch_size: int


class MultiBatch(NamedTuple):
    """A batch from one dataset, with the patch size drawn for it (``batch, patch_size = item[:2]``,
    the pairs ``xanysat.train.loop`` takes).

    Attributes:
        batch: the model batch (see ``xanysat.loaders.datasets.collate``).
        patch_size: patch size in metres.
        dataset: the dataset's name (or position).

    Example:
        >>> mb = MultiBatch({"s2": torch.zeros(4, 2, 10, 4, 4)}, 20, "small")
        >>> batch, patch_size = mb[:2]
        >>> patch_size, mb.dataset, tuple(batch["s2"].shape)
        (20, 'small', (4, 2, 10, 4, 4))
    """

    batch: dict
    patch_size: int
    dataset: str | int


def _per_dataset(value, names, what: str) -> list:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{what} has no entry for datasets {missing}; give one per dataset ({list(names)}).")
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(f"{what} has {len(value)} entries for {len(names)} datasets.")
        return list(value)
    return [value] * len(names)


class MultiDatasetSampler(Sampler[list[MultiIndex]]):
    """Batches from several datasets, each batch from one of them (SPEC section 5, GeoPlex).

    Every step draws a dataset among those not yet exhausted with probability proportional
    to ``weights`` (default: uniform), takes that dataset's next ``batch_size`` items (of a
    shuffled order) and a patch size drawn uniformly from its set. The iteration ends when
    every dataset is exhausted or after ``length`` batches. Use it as ``batch_sampler=`` of
    a ``DataLoader`` over ``MultiDataset(datasets)`` with ``collate_fn=collate_multi``, or
    through ``multi_dataset_batches``.

    Args:
        datasets: a mapping name -> dataset, or a sequence (names are then positions); only
            their lengths (and ``tile_size_m``, to check patch sizes, where they have one) are used.
        batch_sizes: one per dataset (mapping or sequence), or one for all.
        patch_sizes: per dataset an int or a sequence of patch sizes in metres (multiples of 10
            dividing the dataset's tiles), or one for all.
        weights: per dataset, relative probabilities of being drawn (GeoPlex: PLANTED 2,
            PASTIS 1, FLAIR 1, TreeSatAI 1, S2NAIP 4); default uniform.
        length: at most this many batches per iteration.
        shuffle: shuffle each dataset's items every iteration.
        drop_last: a dataset whose remaining items do not fill a batch is exhausted.
        generator: a ``torch.Generator``.

    Example:
        >>> s = MultiDatasetSampler({"a": range(5), "b": range(8)}, {"a": 2, "b": 4}, {"a": 10, "b": (20, 40)},
        ...                         generator=torch.Generator().manual_seed(0))
        >>> [(b[0].dataset, len(b), b[0].patch_size) for b in s]
        [('a', 2, 10), ('b', 4, 20), ('a', 2, 10), ('b', 4, 40), ('a', 1, 10)]
    """

    def __init__(self, datasets, batch_sizes, patch_sizes, *, weights=None, length: int | None = None,
                 shuffle: bool = True, drop_last: bool = False, generator: torch.Generator | None = None):
        self.names = list(datasets) if isinstance(datasets, Mapping) else list(range(len(datasets)))
        items = [datasets[n] for n in self.names]
        if not items:
            raise ValueError("no datasets given.")
        self.sizes = [len(d) for d in items]
        self.batch_sizes = [int(b) for b in _per_dataset(batch_sizes, self.names, "batch_sizes")]
        self.patch_sizes = [tuple(int(p) for p in (ps if isinstance(ps, (list, tuple)) else [ps]))
                            for ps in _per_dataset(patch_sizes, self.names, "patch_sizes")]
        self.weights = [float(w) for w in _per_dataset(1.0 if weights is None else weights, self.names, "weights")]
        for name, item, b, ps, w in zip(self.names, items, self.batch_sizes, self.patch_sizes, self.weights):
            if b < 1 or w <= 0 or not ps:
                raise ValueError(f"dataset {name!r}: batch size {b}, weight {w}, patch sizes {ps}; expected a positive "
                                 "batch size and weight and at least one patch size.")
            tile = getattr(item, "tile_size_m", None)
            for p in ps:
                if p <= 0 or p % 10 or (tile is not None and any(round(t) % p for t in tile)):
                    raise ValueError(f"dataset {name!r}: patch size {p} m must be a positive multiple of 10 m"
                                     + (f" dividing its {tile[0]:g} x {tile[1]:g} m tiles." if tile else "."))
        self.length = length
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator

    def _batches(self, d: int) -> int:
        n, b = self.sizes[d], self.batch_sizes[d]
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        total = sum(self._batches(d) for d in range(len(self.names)))
        return total if self.length is None else min(total, self.length)

    def __iter__(self) -> Iterator[list[MultiIndex]]:
        g = self.generator
        order = [torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n)) for n in self.sizes]
        left = [self._batches(d) for d in range(len(self.names))]
        position = [0] * len(self.names)
        for _ in range(len(self)):
            open_ = [d for d in range(len(self.names)) if left[d]]
            w = torch.tensor([self.weights[d] for d in open_], dtype=torch.float64)
            d = open_[int(torch.multinomial(w, 1, generator=g))]
            ps = self.patch_sizes[d]
            patch = ps[int(torch.randint(len(ps), (1,), generator=g))]
            start, position[d], left[d] = position[d], position[d] + self.batch_sizes[d], left[d] - 1
            yield [MultiIndex(self.names[d], i, patch) for i in order[d][start:position[d]]]


class MultiDataset(Dataset):
    """Several datasets behind one, indexed by ``MultiIndex`` (for ``MultiDatasetSampler``).

    Items are ``(key, sample)`` pairs, which ``collate_multi`` turns into a ``MultiBatch``.

    Args:
        datasets: a mapping name -> dataset, or a sequence (names are then positions).

    Example:
        >>> ds = MultiDataset({"a": ["a0", "a1"], "b": ["b0", "b1", "b2"]})
        >>> len(ds), ds[MultiIndex("b", 2, 20)]
        (5, (MultiIndex(dataset='b', index=2, patch_size=20), 'b2'))
        >>> MultiDataset([["x"], ["y"]])[MultiIndex(1, 0, 10)][1]
        'y'
    """

    def __init__(self, datasets):
        self.datasets = dict(datasets) if isinstance(datasets, Mapping) else dict(enumerate(datasets))

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, key: MultiIndex):
        return key, self.datasets[key.dataset][key.index]


def collate_multi(items) -> MultiBatch:
    """``collate`` for ``MultiDataset`` items: a ``MultiBatch(batch, patch_size, dataset)``.

    Args:
        items: ``(MultiIndex, sample)`` pairs, all of one dataset and patch size.

    Returns:
        A ``MultiBatch`` whose batch is ``xanysat.loaders.datasets.collate`` of the samples.

    Raises:
        ValueError: the items mix datasets or patch sizes.

    Example:
        >>> sample = {"s2": torch.zeros(2, 10, 4, 4), "s2_dates": torch.tensor([5.0, 9.0]),
        ...           "s2_mask": torch.ones(2, 10, 4, 4, dtype=torch.bool)}
        >>> mb = collate_multi([(MultiIndex("a", i, 20), sample) for i in range(3)])
        >>> mb.patch_size, mb.dataset, tuple(mb.batch["s2"].shape)
        (20, 'a', (3, 2, 10, 4, 4))
        >>> collate_multi([(MultiIndex("a", 0, 20), sample), (MultiIndex("a", 1, 40), sample)])
        Traceback (most recent call last):
            ...
        ValueError: a multi-dataset batch mixes datasets / patch sizes [('a', 20), ('a', 40)].
    """
    keys = {(k.dataset, k.patch_size) for k, _ in items}
    if len(keys) != 1:
        raise ValueError(f"a multi-dataset batch mixes datasets / patch sizes {sorted(keys, key=str)}.")
    (dataset, patch), = keys
    return MultiBatch(collate([sample for _, sample in items]), patch, dataset)


def multi_dataset_batches(datasets, batch_sizes, patch_sizes, *, generator: torch.Generator | None = None,
                          weights=None, length: int | None = None, num_workers: int = 0, **loader_kwargs):
    """A ``DataLoader`` of ``MultiBatch`` es: each batch from one dataset, with its batch size and
    a patch size drawn from its set (see ``MultiDatasetSampler``).

    Args:
        datasets, batch_sizes, patch_sizes, weights, length, generator: as for
            ``MultiDatasetSampler``.
        num_workers: ``DataLoader`` worker processes.
        **loader_kwargs: further ``DataLoader`` arguments (``pin_memory``...).

    Returns:
        A ``DataLoader`` over ``MultiDataset(datasets)`` yielding ``MultiBatch`` es.

    Example:
        >>> from xanysat.loaders.datasets import CubeDataset
        >>> from xanysat.loaders.samplers import GridTileSampler
        >>> from xanysat.testing import synthetic_cube
        >>> small = synthetic_cube(("s2",), extent_m=80, n_dates=2)
        >>> large = synthetic_cube(("s2",), extent_m=240, n_dates=2, seed=1)
        >>> sets = {"small": CubeDataset(small, GridTileSampler(small, 40)),
        ...         "large": CubeDataset(large, GridTileSampler(large, 120))}
        >>> loader = multi_dataset_batches(sets, {"small": 4, "large": 2}, {"small": [20, 40], "large": 60},
        ...                                generator=torch.Generator().manual_seed(0))
        >>> sorted((b.dataset, b.patch_size, tuple(b.batch["s2"].shape)) for b in loader)
        [('large', 60, (2, 2, 10, 12, 12)), ('large', 60, (2, 2, 10, 12, 12)), ('small', 20, (4, 2, 10, 4, 4))]
    """

    sampler = MultiDatasetSampler(datasets, batch_sizes, patch_sizes, weights=weights, length=length,
                                  generator=generator)
    return DataLoader(MultiDataset(datasets), batch_sampler=sampler, collate_fn=collate_multi,
                      num_workers=num_workers, **loader_kwargs)
