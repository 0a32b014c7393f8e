"""Getting a model: the released AnySat weights through huggingface_hub, or an embedded default."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from xanysat.errors import CheckpointError
from xanysat.nn.encoder import AnySat, AnySatConfig

ANYSAT_REPO = "g-astruc/AnySat"
ANYSAT_FILE = "models/AnySat.pth"
ANYSAT_REVISION = os.environ.get("XANYSAT_ANYSAT_REVISION", "main")
CHECKPOINT_ENV = "XANYSAT_ANYSAT_CHECKPOINT"
UNTRAINED_TINY = "untrained-tiny"
DEFAULT = "default"
DEFAULT_DIR = Path(__file__).parents[1] / "data" / "models" / "default"
"""The embedded default: a small model pretrained by xanysat on real data (see its README.md)."""

_HOW_TO_GET = f"""the released AnySat weights are not available offline.
Get them once on a machine with network access:
    huggingface-cli download {ANYSAT_REPO} {ANYSAT_FILE} --revision {ANYSAT_REVISION}
(or download https://huggingface.co/{ANYSAT_REPO}/resolve/{ANYSAT_REVISION}/{ANYSAT_FILE}), then either
  * copy the Hugging Face cache (~/.cache/huggingface/hub or $HF_HUB_CACHE) to this machine, or
  * put the file anywhere and set {CHECKPOINT_ENV}=/path/to/AnySat.pth, or
  * pass it directly: xanysat.load_model("base", checkpoint="/path/to/AnySat.pth")."""


def official_checkpoint_path(*, checkpoint: str | Path | None = None, cache_dir: str | Path | None = None,
                             local_files_only: bool = False) -> Path:
    """Locate (and if allowed download) the released ``AnySat.pth``.

    Order: ``checkpoint``, then ``$XANYSAT_ANYSAT_CHECKPOINT``, then the Hugging Face cache /
    download of ``g-astruc/AnySat`` at ``ANYSAT_REVISION``.

    Args:
        checkpoint: path to the file (skips the Hub); it must exist.
        cache_dir: Hugging Face cache directory (None: huggingface_hub's default).
        local_files_only: look in the cache only, never download.

    Returns:
        The path of ``AnySat.pth``.

    Raises:
        CheckpointError: the file cannot be found or fetched; the message says how to get it.

    Example:
        >>> import tempfile
        >>> path = official_checkpoint_path(local_files_only=True)  # doctest: +SKIP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     local = Path(tmp) / "AnySat.pth"
        ...     _ = local.write_bytes(b"")
        ...     official_checkpoint_path(checkpoint=local) == local
        True
        >>> official_checkpoint_path(checkpoint="/nonexistent/AnySat.pth")
        Traceback (most recent call last):
        xanysat.errors.CheckpointError: no AnySat checkpoint at /nonexistent/AnySat.pth.
    """
    explicit = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise CheckpointError(f"no AnySat checkpoint at {path}.")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ANYSAT_REPO, ANYSAT_FILE, revision=ANYSAT_REVISION, cache_dir=cache_dir,
                                    local_files_only=local_files_only))
    except Exception as error:  # huggingface_hub raises many network/cache error types
        raise CheckpointError(f"{_HOW_TO_GET}\n(cause: {type(error).__name__}: {error})") from error


def _untrained_tiny() -> AnySat:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AnySat(AnySatConfig.tiny())
    model.card = model.card.with_changes(
        model_id=f"{UNTRAINED_TINY} (random weights, seed 0: plumbing only, not meaningful features)")
    return model.eval()


def load_model(name: str | Path | None = None, *, checkpoint: str | Path | None = None,
               cache_dir: str | Path | None = None, local_files_only: bool = False,
               device: str | torch.device = "cpu") -> AnySat:
    """Load an AnySat encoder in eval mode.

    Args:
        name: ``"base"`` (the released weights), ``"default"`` (a small model pretrained by
            xanysat, in ``xanysat/data/models/default`` where the package ships one), a
            directory written by ``xanysat.nn.checkpoint.save_pretrained``, ``"untrained-tiny"``
            (random weights, for plumbing), or ``None``: ``"base"`` when its weights are on this
            machine, else ``"default"`` when shipped, else ``"untrained-tiny"`` with a warning.
        checkpoint: path to the official ``AnySat.pth`` (skips the Hub).
        cache_dir: Hugging Face cache directory.
        local_files_only: never touch the network.
        device: where to put the model.

    Raises:
        CheckpointError: ``"base"`` requested but its weights cannot be found or fetched; an
            unknown name, a missing directory or a file instead of a directory; a model
            directory whose ``config.json`` or ``model.safetensors`` is unreadable or does not
            match (``load_pretrained``). The message names the file.

    Example:
        >>> import xanysat
        >>> model = xanysat.load_model("base")  # doctest: +SKIP
        >>> xanysat.load_model("untrained-tiny").config.embed_dim
        256
    """
    from xanysat.nn.checkpoint import load_official, load_pretrained

    if name is None:
        try:
            path = official_checkpoint_path(checkpoint=checkpoint, cache_dir=cache_dir, local_files_only=True)
        except CheckpointError:
            if (DEFAULT_DIR / "config.json").is_file():
                return load_pretrained(DEFAULT_DIR).to(device)
            import warnings

            warnings.warn("released AnySat weights not found locally: using 'untrained-tiny' (random weights). "
                          + _HOW_TO_GET, stacklevel=2)
            return _untrained_tiny().to(device)
        name, checkpoint = "base", path
    if name == DEFAULT:
        if not (DEFAULT_DIR / "config.json").is_file():
            raise CheckpointError(f"the embedded default model is missing from {DEFAULT_DIR}; reinstall xanysat.")
        return load_pretrained(DEFAULT_DIR).to(device)
    if name == "base":
        path = official_checkpoint_path(checkpoint=checkpoint, cache_dir=cache_dir, local_files_only=local_files_only)
        model = load_official(path, AnySatConfig.base())
        model.card = model.card.with_changes(model_id=f"anysat-base ({ANYSAT_REPO}:{ANYSAT_FILE}@{_revision_of(path)})")
        return model.to(device)
    if name == UNTRAINED_TINY:
        return _untrained_tiny().to(device)
    path = Path(name)
    if path.is_dir():
        return load_pretrained(name).to(device)
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; expected a model directory written by save_pretrained (model.safetensors and "
            f"config.json). For the official AnySat.pth use xanysat.load_model('base', checkpoint='{path}')."
        )
    where = (f" (no directory {path})" if isinstance(name, Path) or os.sep in str(name) else "")
    raise CheckpointError(
        f"unknown model {str(name)!r}{where}: use 'base', '{DEFAULT}', '{UNTRAINED_TINY}' or a saved model directory."
    )


def _revision_of(path: Path) -> str:
    parts = path.absolute().parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1][:12]
    return "local file"
