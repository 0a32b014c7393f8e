"""Models on workers: a small picklable reference in the graph, one model per process.

A dask graph never holds the model: tasks carry a ``ModelRef`` (name or directory, weights
hash, device, dtype) and ``get_model`` loads it once per worker process. A model object the
user passes is registered in this process (threaded scheduler: used as is) and saved once
under the cache directory, so that worker processes on this machine can load it; on a remote
cluster pass a name or a directory every worker can read.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from xanysat.errors import CheckpointError

_MODELS: dict[tuple, torch.nn.Module] = {}
_REGISTERED: dict[str, torch.nn.Module] = {}
_LOAD_LOCK = threading.Lock()
_FORWARD_LOCKS: dict[str, threading.Lock] = {}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where xanysat keeps models it saved for workers (``$XANYSAT_CACHE`` or ``~/.cache/xanysat``).

    Returns:
        The directory (it may not exist yet).

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"XANYSAT_CACHE": "/data/anysat-cache"}):
        ...     cache_dir().as_posix()
        '/data/anysat-cache'
        >>> unset = {k: v for k, v in os.environ.items() if k != "XANYSAT_CACHE"}
        >>> with mock.patch.dict(os.environ, unset, clear=True):
        ...     cache_dir() == Path.home() / ".cache" / "xanysat"
        True
    """
    return Path(os.environ.get("XANYSAT_CACHE", Path.home() / ".cache" / "xanysat"))


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to get its model: small, picklable, hashable.

    Build one with ``model_ref``; ``get_model`` turns it into the model on a worker.

    Example:
        >>> import pickle
        >>> ref = model_ref("untrained-tiny", device="cpu")
        >>> ref.source, ref.device, ref.dtype, len(ref.weights)
        ('untrained-tiny', 'cpu', 'auto', 16)
        >>> pickle.loads(pickle.dumps(ref)) == ref and hash(ref) == hash(pickle.loads(pickle.dumps(ref)))
        True
    """

    source: str | None
    """``load_model`` name or a directory; ``None`` for the default model."""
    weights: str
    """Content hash of the weights (provenance, and the key of a registered model)."""
    model_id: str
    device: str
    dtype: str


def resolve_device(device: str | torch.device | None) -> str:
    """``"auto"``/None: CUDA if available, else CPU; an explicit CUDA device must exist here.

    Args:
        device: ``"auto"``, None, or a device name or ``torch.device``.

    Returns:
        The device name.

    Raises:
        ValueError: a CUDA device is asked for where torch sees none.

    Example:
        >>> import torch
        >>> resolve_device(torch.device("cpu")), resolve_device(None) in ("cpu", "cuda")
        ('cpu', True)
    """
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device; use device='cpu' or 'auto'.")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> str:
    """None: float32 on CPU, bfloat16 on CUDA.

    Args:
        dtype: None, a name in ``DTYPES`` or a ``torch.dtype``.
        device: the device name, for the default.

    Returns:
        The dtype name, a key of ``DTYPES``.

    Raises:
        ValueError: a dtype outside ``DTYPES``.

    Example:
        >>> import torch
        >>> resolve_dtype(None, "cpu"), resolve_dtype(None, "cuda:0"), resolve_dtype(torch.float16, "cpu")
        ('float32', 'bfloat16', 'float16')
        >>> resolve_dtype("float64", "cpu")
        Traceback (most recent call last):
            ...
        ValueError: dtype must be one of float32, bfloat16, float16, got 'float64'.
    """
    if dtype is None:
        return "bfloat16" if device.startswith("cuda") else "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return name


def model_ref(model=None, *, device="auto", dtype=None) -> ModelRef:
    """Reference ``model`` (an ``AnySat``, a ``load_model`` name or directory, or None).

    A name or directory is loaded once in this process (to hash its weights). A model object
    is registered here and saved under ``cache_dir()`` (once per weights) so that worker
    processes can load it.

    Args:
        model: an ``AnySat``, a ``load_model`` name or directory, or None (the default model).
        device: ``"auto"`` (resolved on the worker by ``placement``) or a device name.
        dtype: None (``"auto"``: the device's default) or a dtype name / ``torch.dtype``.

    Returns:
        A ``ModelRef``.

    Raises:
        CheckpointError: ``model`` is of another type.
        ValueError: an unknown dtype.

    Example:
        >>> ref = model_ref("untrained-tiny", dtype="bfloat16")
        >>> ref.source, ref.device, ref.dtype, ref.model_id.split()[0]
        ('untrained-tiny', 'auto', 'bfloat16', 'untrained-tiny')
        >>> model_ref(3)
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: model must be an AnySat, a load_model name or directory, or None; got int.
    """
    from xanysat.nn.checkpoint import save_pretrained
    from xanysat.nn.encoder import AnySat
    from xanysat.nn.hub import load_model

    device = "auto" if device in (None, "auto") else str(device)
    dtype = "auto" if dtype is None else resolve_dtype(dtype, "cpu")
    if isinstance(model, AnySat):
        obj, source = model, None
    elif model is None or isinstance(model, (str, os.PathLike)):
        source = None if model is None else str(model)
        key = (source, "cpu", "float32")
        if key not in _MODELS:
            _MODELS[key] = load_model(source).eval()
        obj = _MODELS[key]
    else:
        raise CheckpointError(f"model must be an AnySat, a load_model name or directory, or None; got {type(model).__name__}.")
    weights = _weights_hash(obj)
    if isinstance(model, AnySat):
        _REGISTERED[weights] = obj
        directory = cache_dir() / "models" / weights
        if not (directory / "config.json").is_file():
            tmp = directory.with_name(f"{weights}.tmp{os.getpid()}")
            save_pretrained(obj, tmp)
            try:
                tmp.rename(directory)
            except OSError:  # another process saved it first
                pass
        source = str(directory)
    return ModelRef(source, weights, obj.card.model_id, device, dtype)


_HASHES: dict[int, tuple[tuple, str]] = {}


def _weights_hash(model) -> str:
    """``weights_hash``, cached while no parameter, buffer (tensor version counters) or metadata changed."""
    from xanysat.nn.checkpoint import model_metadata, weights_hash

    state = (tuple((id(t), t._version) for t in model.state_dict(keep_vars=True).values()),
             repr(model_metadata(model)))
    cached = _HASHES.get(id(model))
    if cached is None or cached[0] != state:
        cached = (state, weights_hash(model))
        _HASHES[id(model)] = cached
    return cached[1]


def placement(ref: ModelRef) -> tuple[str, str]:
    """Device and dtype names of ``ref`` in this process: ``"auto"`` is resolved here, on the
    worker, so a CPU-only client can send work to GPU workers.

    Args:
        ref: the model reference.

    Returns:
        ``(device, dtype)`` names.

    Example:
        >>> placement(model_ref("untrained-tiny", device="cpu"))
        ('cpu', 'float32')
    """
    device = resolve_device(ref.device)
    return device, resolve_dtype(None if ref.dtype == "auto" else ref.dtype, device)


def get_model(ref: ModelRef) -> torch.nn.Module:
    """The model for ``ref`` in this process, loaded once, in eval mode on its device and dtype.

    Args:
        ref: the model reference.

    Returns:
        The ``AnySat`` model, shared by every task of this process.

    Raises:
        CheckpointError: the weights loaded here differ from those ``ref`` was built for.

    Example:
        >>> ref = model_ref("untrained-tiny", device="cpu")
        >>> model = get_model(ref)
        >>> model.training, model.config.embed_dim, get_model(ref) is model
        (False, 256, True)
    """
    device, dtype = placement(ref)
    key = (ref.weights, device, dtype)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOAD_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load(ref, device, dtype)
        return _MODELS[key]


def client_model(ref: ModelRef) -> torch.nn.Module:
    """The referenced model on the CPU in float32, as the client reads it (sensors, width,
    statistics, tile size), cached like ``get_model``.

    Example:
        >>> client_model(model_ref("untrained-tiny", device="cpu")).config.embed_dim
        256
    """
    return get_model(ModelRef(ref.source, ref.weights, ref.model_id, "cpu", "float32"))


def _load(ref: ModelRef, device: str, dtype: str) -> torch.nn.Module:
    from xanysat.nn.hub import load_model

    base = _REGISTERED.get(ref.weights) or _MODELS.get((ref.source, "cpu", "float32"))
    if base is None:
        from xanysat.nn.checkpoint import weights_hash

        base = load_model(ref.source)
        if weights_hash(base) != ref.weights:
            raise CheckpointError(
                f"this worker loaded {ref.source or 'the default model'} with weights {weights_hash(base)}, but the "
                f"graph was built for {ref.weights} ({ref.model_id}); give every worker the same model files."
            )
    import copy

    model = base if (device, dtype) == ("cpu", "float32") else copy.deepcopy(base)
    model = model.to(device, DTYPES[dtype]).eval()
    return model


def forward_lock(device: str) -> threading.Lock:
    """One forward at a time per device in a process: threads read and prepare data in
    parallel, while the model uses all of torch's threads (or the whole GPU) for one batch.

    Args:
        device: the device name.

    Returns:
        The process's lock for that device.

    Example:
        >>> forward_lock("cpu") is forward_lock("cpu"), forward_lock("cpu") is forward_lock("cuda:0")
        (True, False)
        >>> with forward_lock("cpu"):
        ...     pass  # run the model here
    """
    with _LOAD_LOCK:
        return _FORWARD_LOCKS.setdefault(device, threading.Lock())


def loaded_models() -> int:
    """How many models this process holds (for tests of per-worker caching).

    Returns:
        The number of cached model objects (a name referenced by ``model_ref`` counts once,
        each device/dtype placement by ``get_model`` once more).

    Example:
        >>> ref = model_ref("untrained-tiny", device="cpu")
        >>> n = loaded_models()
        >>> _ = get_model(ref); _ = get_model(ref)
        >>> loaded_models() - n <= 1  # loaded at most once, then cached
        True
    """
    return len(_MODELS)
