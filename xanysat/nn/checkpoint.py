"""Checkpoints: the official AnySat format and xanysat's own (safetensors + config JSON).

Nothing here unpickles arbitrary objects: official files load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from xanysat.errors import CheckpointError
from xanysat.nn.card import ModelCard
from xanysat.nn.encoder import AnySat, AnySatConfig
from xanysat.nn.state import load_state

# (official key, xanysat key) templates, tried in order: {s} sensor, {i} block index, {r} rest,
# {D} the combiner depth (index of the cross-attention block in the official "blocks" list).
_KEY_RULES = (
    ("cls_token", "cls_token"),
    ("projector_{s}.patch_embed.weight", "projectors.{s}.conv.weight"),
    ("projector_{s}.mlp.{r}", "projectors.{s}.mlp.{r}"),
    ("projector_{s}.pad_parameter", "projectors.{s}.pad_value"),
    ("projector_{s}.patch_embed.inconv.{r}", "projectors.{s}.mlp_in.{r}"),
    ("projector_{s}.patch_embed.in_norm.{r}", "projectors.{s}.in_norm.{r}"),
    ("projector_{s}.patch_embed.attention_heads.Q", "projectors.{s}.query"),
    ("projector_{s}.patch_embed.attention_heads.fc1_k.{r}", "projectors.{s}.key.{r}"),
    ("projector_{s}.patch_embed.mlp.{r}", "projectors.{s}.mlp_out.{r}"),
    ("projector_{s}.patch_embed.out_norm.{r}", "projectors.{s}.out_norm.{r}"),
    ("spatial_encoder.cls_token", "patch_encoder.cls_token"),
    ("spatial_encoder.predictor_norm.{r}", "patch_encoder.norm.{r}"),
    ("spatial_encoder.predictor_blocks.{i}.attn.rpe_k.lookup_table_weight", "patch_encoder.blocks.{i}.attn.rpe_weight"),
    ("spatial_encoder.predictor_blocks.{i}.{r}", "patch_encoder.blocks.{i}.{r}"),
    ("blocks.{D}.attn.q_learned", "combiner.cross.attn.query"),
    ("blocks.{D}.attn.rpe_k.lookup_table_weight", "combiner.cross.attn.rpe_weight"),
    ("blocks.{D}.{r}", "combiner.cross.{r}"),
    ("blocks.{i}.{r}", "combiner.blocks.{i}.{r}"),
)
_PLACEHOLDERS = {"s": r"(?P<s>[a-z0-9-]+)", "i": r"(?P<i>\d+)", "r": r"(?P<r>.+)"}
_LIGHTNING_PREFIXES = ("target_encoder.", "model.encoder.", "model.")


@lru_cache(maxsize=None)
def _template_regex(template: str, depth: int) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template.replace("{D}", str(depth)))
    return re.compile("".join(_PLACEHOLDERS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def _translate(key: str, depth: int, official_to_ours: bool) -> str | None:
    for official, ours in _KEY_RULES:
        source, target = (official, ours) if official_to_ours else (ours, official)
        if match := _template_regex(source, depth).fullmatch(key):
            return target.replace("{D}", str(depth)).format(**match.groupdict())
    return None


def official_to_xanysat_key(key: str, depth: int) -> str | None:
    """Map one official state-dict key to xanysat's naming (None if it has no counterpart).

    Args:
        key: a key of the official ``AnySat.model`` state dict.
        depth: the model's depth (the official ``blocks[depth]`` is the combiner's
            cross-attention block).

    Returns:
        The xanysat key, or None.

    Example:
        >>> official_to_xanysat_key("projector_s2.pad_parameter", 6)
        'projectors.s2.pad_value'
        >>> official_to_xanysat_key("blocks.6.attn.q_learned", 6), official_to_xanysat_key("blocks.2.mlp.fc1.bias", 6)
        ('combiner.cross.attn.query', 'combiner.blocks.2.mlp.fc1.bias')
        >>> official_to_xanysat_key("head.weight", 6) is None
        True
    """
    return _translate(key, depth, official_to_ours=True)


def xanysat_to_official_key(key: str, depth: int) -> str:
    """Inverse of ``official_to_xanysat_key``.

    Args:
        key: a key of ``AnySat.state_dict()``.
        depth: the model's depth.

    Returns:
        The official key.

    Raises:
        KeyError: ``key`` is not an AnySat key.

    Example:
        >>> xanysat_to_official_key("combiner.cross.attn.query", 6)
        'blocks.6.attn.q_learned'
        >>> xanysat_to_official_key("head.weight", 6)
        Traceback (most recent call last):
            ...
        KeyError: 'head.weight'
    """
    official = _translate(key, depth, official_to_ours=False)
    if official is None:
        raise KeyError(key)
    return official


def to_official_state_dict(model: AnySat) -> dict[str, Tensor]:
    """The model's weights under the official key names (loadable by the release's ``AnySat.model``).

    Args:
        model: an ``AnySat``.

    Returns:
        Official key -> tensor, the tensors of ``state_dict`` (sharing the model's memory).

    Example:
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> official = to_official_state_dict(model)
        >>> len(official) == len(model.state_dict()), official["projector_s2.pad_parameter"].shape
        (True, torch.Size([]))
        >>> torch.equal(official["blocks.1.attn.q_learned"], model.combiner.cross.attn.query)  # D = 1: cross block
        True
    """
    return {xanysat_to_official_key(k, model.config.depth): v for k, v in model.state_dict().items()}


def config_from_official(config: dict) -> AnySatConfig:
    """``AnySatConfig`` from the official (hubconf) config dict, checking it against the sensor table.

    Args:
        config: the release's model config: ``embed_dim``, ``depth``, ``num_heads``,
            ``modalities["all"]`` and one ``projectors`` entry per sensor.

    Returns:
        The matching ``AnySatConfig``.

    Raises:
        CheckpointError: a projector's channels or time-series flag do not match the sensor table.

    Example:
        >>> s2 = {"in_channels": 10, "T": 367, "mlp_in": [4, 16, 32, 64, 32], "n_head": 16, "d_k": 8}
        >>> official = {"embed_dim": 32, "depth": 1, "num_heads": 2, "modalities": {"all": ["s2"]},
        ...             "projectors": {"s2": s2}}
        >>> config = config_from_official(official)
        >>> config.embed_dim, config.sensors, config.ltae_mlp_in
        (32, ('s2',), (4, 16, 32, 64, 32))
        >>> config_from_official({**official, "projectors": {"s2": {**s2, "in_channels": 13}}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: official projector 's2' (...) does not match the sensor table.
    """
    from xanysat.sensors.table import MODALITIES

    sensors = tuple(config["modalities"]["all"])
    projectors = config["projectors"]
    for name in sensors:
        m = MODALITIES.get(name)
        p = projectors.get(name, {})
        channels = p.get("in_chans", p.get("in_channels"))
        if m is None or channels != m.n_bands or ("T" in p) != m.time_series:
            raise CheckpointError(f"official projector {name!r} ({p}) does not match the sensor table.")
    ts = next(projectors[n] for n in sensors if MODALITIES[n].time_series)
    vhr = next((projectors[n] for n in sensors if not MODALITIES[n].time_series), None)
    return AnySatConfig(
        embed_dim=config["embed_dim"], depth=config["depth"], num_heads=config["num_heads"],
        mlp_ratio=config.get("mlp_ratio", 4.0), sensors=sensors, ltae_mlp_in=tuple(ts["mlp_in"]),
        ltae_heads=ts["n_head"], ltae_key_dim=ts["d_k"],
        vhr_mlp_hidden=vhr["mlp"][1] if vhr else None,
        official_flash_attention=bool(config.get("flash_attn", False)),
    )


def _read_official(source) -> dict[str, Tensor]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}.")
        source = load_state(path)
    if "state_dict" in source and isinstance(source["state_dict"], dict):
        source = source["state_dict"]
    if "cls_token" not in source:
        for prefix in _LIGHTNING_PREFIXES:
            if f"{prefix}cls_token" in source:
                return {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    return dict(source)


def convert_official_state_dict(state_dict: dict[str, Tensor], config: AnySatConfig) -> dict[str, Tensor]:
    """Rename official keys to xanysat's; strict: unknown keys raise ``CheckpointError``.

    Projectors of sensors outside ``config.sensors`` are dropped on purpose. Missing keys are
    reported when the result is loaded (``load_official``).

    Args:
        state_dict: official key -> tensor.
        config: the architecture the weights are for.

    Returns:
        xanysat key -> tensor.

    Raises:
        CheckpointError: keys that are not AnySat keys.

    Example:
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> official = to_official_state_dict(model)
        >>> convert_official_state_dict(official, model.config).keys() == model.state_dict().keys()
        True
        >>> convert_official_state_dict({**official, "decoder.weight": torch.zeros(1)}, model.config)
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: 1 keys of the checkpoint are not AnySat keys, e.g. ['decoder.weight'].
    """
    from xanysat.sensors.table import MODALITIES

    converted, unknown = {}, []
    for key, value in state_dict.items():
        new = official_to_xanysat_key(key, config.depth)
        sensor = new.split(".")[1] if new and new.startswith("projectors.") else None
        if new is None or (sensor is not None and sensor not in MODALITIES):
            unknown.append(key)
        elif sensor is None or sensor in config.sensors:
            converted[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys of the checkpoint are not AnySat keys, e.g. {unknown[:5]}.")
    return converted


def load_official(source, config: AnySatConfig | dict | None = None) -> AnySat:
    """Build an ``AnySat`` in eval mode from an official checkpoint, loading strictly.

    Args:
        source: path of the release's ``AnySat.pth`` (read with ``weights_only=True``), or a
            state dict; a Lightning checkpoint (``state_dict`` with a ``model.`` or
            ``target_encoder.`` prefix) is unwrapped.
        config: an ``AnySatConfig``, the official config dict, or None (``AnySatConfig.base()``).

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: no file, keys that are not AnySat keys, or missing, unexpected or
            wrongly shaped weights.

    Example:
        >>> import tempfile
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     path = Path(directory) / "AnySat.pth"
        ...     torch.save({"state_dict": {f"model.{k}": v for k, v in to_official_state_dict(model).items()}}, path)
        ...     loaded = load_official(path, model.config)
        >>> weights_hash(loaded) == weights_hash(model), loaded.training
        (True, False)
        >>> load_official("missing/AnySat.pth", model.config)
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: no checkpoint file at missing/AnySat.pth.
    """
    if isinstance(config, dict):
        config = config_from_official(config.get("config", config))
    config = config or AnySatConfig.base()
    model = AnySat(config)
    state = convert_official_state_dict(_read_official(source), config)
    _load_strict(model, state)
    return model.eval()


def _load_strict(model: AnySat, state: dict[str, Tensor], source: str = "checkpoint",
                 fix: str = "load it with the architecture it was saved with") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{source} does not match {model.config}: {detail}. The weights were saved for "
                              f"another architecture: {fix}.")
    model.load_state_dict(state, strict=True)


def save_pretrained(model: AnySat, directory: str | Path, *, model_id: str | None = None, card: str = "") -> Path:
    """Write ``model.safetensors`` and ``config.json`` (xanysat's format) into ``directory``.

    ``config.json`` holds the architecture, the model id and the normalisation statistics the
    model carries (``model.card``).

    Args:
        model: an ``AnySat``.
        directory: created if needed; existing files are overwritten.
        model_id: recorded id (default ``model.card.model_id``).
        card: text of a ``README.md`` model card (none when empty).

    Returns:
        ``directory`` as a ``Path``.

    Example:
        >>> import tempfile
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     saved = save_pretrained(model, Path(directory) / "tiny", model_id="tiny-s2", card="# tiny")
        ...     files = sorted(p.name for p in saved.iterdir())
        ...     meta = json.loads((saved / "config.json").read_text())
        >>> files, meta["model_id"], meta["config"]["embed_dim"]
        (['README.md', 'config.json', 'model.safetensors'], 'tiny-s2', 32)
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    facts = model.card.with_changes(model_id=model_id) if model_id else model.card
    meta = {"format": "xanysat", "config": model.config.to_dict(), **facts.to_json()}
    (directory / "config.json").write_text(json.dumps(meta, indent=1))
    if card:
        (directory / "README.md").write_text(card)
    return directory


def load_pretrained(directory: str | Path) -> AnySat:
    """Load a model saved by ``save_pretrained``, in eval mode.

    Args:
        directory: a directory written by ``save_pretrained``.

    Returns:
        The model, with its card (``model.card``: id, statistics, tile size).

    Raises:
        CheckpointError: a file is missing, ``config.json`` is not JSON or lacks the architecture,
            ``model.safetensors`` is truncated or corrupt, or the weights do not match the saved
            config. The message names the file and says how to fix it.

    Example:
        >>> import tempfile
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     loaded = load_pretrained(save_pretrained(model, directory, model_id="tiny-s2"))
        >>> loaded.card.model_id, loaded.config == model.config, weights_hash(loaded) == weights_hash(model)
        ('tiny-s2', True, True)
        >>> load_pretrained("no-such-directory")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: no-such-directory has no model.safetensors; expected a directory ...
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     _ = (save_pretrained(model, directory) / "config.json").write_text("{")
        ...     load_pretrained(directory)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        xanysat.errors.CheckpointError: .../config.json is not valid JSON (...); ...
    """
    directory = Path(directory)
    for name in ("model.safetensors", "config.json"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} has no {name}; expected a directory written by save_pretrained.")
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    meta, config = _read_config(config_path)
    model = AnySat(config)
    _load_strict(model, _read_safetensors(weights_path),
                 f"{weights_path} (the weights; the architecture is in {config_path})",
                 f"keep model.safetensors and config.json of one save_pretrained call together, or {_RESAVE}")
    model.card = ModelCard.from_json(meta, default_id=model.card.model_id)
    return model.eval()


_RESAVE = "re-save the model with xanysat.nn.checkpoint.save_pretrained, or copy the directory again"


def _read_config(path: Path) -> tuple[dict, AnySatConfig]:
    """``config.json``'s content and architecture, or a ``CheckpointError`` naming the file."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); {_RESAVE}.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} holds no architecture: expected a JSON object with a 'config' object (as "
                              f"save_pretrained writes); {_RESAVE}.")
    try:
        config = AnySatConfig.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError) as error:  # unknown or missing fields, bad sizes, unknown sensors
        raise CheckpointError(f"{path} has an invalid 'config' ({type(error).__name__}: {error}); {_RESAVE}.") from None
    try:
        ModelCard.from_json(meta)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{path} has an invalid model card (normalization, model_id, tile_m): "
                              f"{type(error).__name__}: {error}; {_RESAVE}.") from None
    return meta, config


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}): it is truncated or corrupt; "
                              f"{_RESAVE}.") from None


def weights_hash(model: AnySat) -> str:
    """Short content hash of the weights, for provenance attributes.

    Args:
        model: any ``nn.Module`` (keys and raw bytes of its state dict are hashed).

    Returns:
        The first 16 hex digits of the SHA-256.

    Example:
        >>> def tiny(seed):
        ...     with torch.random.fork_rng():
        ...         torch.manual_seed(seed)
        ...         return AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> len(weights_hash(tiny(0))), weights_hash(tiny(0)) == weights_hash(tiny(0)) != weights_hash(tiny(1))
        (16, True)
    """
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    metadata = model_metadata(model)
    if metadata:  # what else changes embeddings: the model's own statistics and tile size
        digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def model_metadata(model) -> dict:
    """What a model carries besides its weights that changes its embeddings (``model.card.metadata()``).

    Example:
        >>> model = AnySat(AnySatConfig(embed_dim=32, depth=1, num_heads=2, sensors=("s2",)))
        >>> model_metadata(model)
        {}
        >>> model.card = model.card.with_changes(tile_m=160)
        >>> model_metadata(model)
        {'tile_m': 160}
    """
    return model.card.metadata()
