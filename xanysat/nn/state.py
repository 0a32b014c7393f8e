"""Training checkpoints (step, weights, optimizer, random generators) saved and read without pickle.

``torch.load`` runs with ``weights_only=True``: a checkpoint holds tensors, numbers, strings,
lists, tuples and dicts only, so a poisoned ``checkpoint.pt`` cannot run code when a run resumes.
Random states that are not tensors already (numpy's) are stored as tensors.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from xanysat.errors import CheckpointError


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random generator a training loop draws from, as plain tensors, numbers and strings.

    Example:
        >>> state = rng_state(torch.Generator().manual_seed(0))
        >>> sorted(state), state["numpy"][0], state["numpy"][1].dtype
        (['generator', 'numpy', 'python', 'torch'], 'MT19937', torch.int64)
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` saved.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> saved = rng_state(g)
        >>> first = (torch.rand(2, generator=g), np.random.rand(), random.random())
        >>> set_rng_state(saved, g)
        >>> again = (torch.rand(2, generator=g), np.random.rand(), random.random())
        >>> bool(torch.equal(first[0], again[0])), first[1:] == again[1:]
        (True, True)
    """
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_state(state: dict, path: str | Path) -> Path:
    """Write a training checkpoint atomically (a temporary file, then a rename).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_state({"step": 3, "w": torch.ones(2)}, Path(d) / "checkpoint.pt")
        ...     load_state(path)["step"]
        3
    """
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_state(path: str | Path) -> dict:
    """Read a training checkpoint with ``weights_only=True``; nothing in it is executed.

    Raises:
        CheckpointError: the file is missing, not a torch checkpoint, or holds objects other
            than tensors, numbers, strings and containers (it was not written by xanysat, or it
            was tampered with). The message names the file and never suggests unpickling it.

    Example:
        >>> import pickle, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     bad = Path(d) / "checkpoint.pt"
        ...     torch.save({"step": 1, "obj": Path("x")}, bad)
        ...     load_state(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: .../checkpoint.pt holds objects other than tensors, numbers and strings...
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds objects other than tensors, numbers and strings, so it is not read (it was not "
            "written by this version of xanysat, or it was altered). Delete it to start the run afresh, or "
            "resume from a checkpoint xanysat wrote."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(e).__name__}); "
                              "delete it to start the run afresh.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a training checkpoint (a dict).")
    return state
