"""The model card: what a model carries besides its weights (``AnySat.card``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xanysat.sensors.table import NormStats


@dataclass(frozen=True)
class ModelCard:
    """Identity and training facts of a model, saved with it (``config.json``) and read by every
    layer that embeds with it.

    Attributes:
        model_id: a readable id (recorded in outputs' provenance).
        normalization: sensor -> ``NormStats`` the weights were trained with; ``normalize=True``
            prefers them over the sensor table's.
        tile_m: the tile side (metres) the model was trained on, where it records one; ``embed``
            uses it as the default tile size.

    Example:
        >>> card = ModelCard("tiny").with_changes(tile_m=160)
        >>> card.model_id, card.tile_m, card.metadata()
        ('tiny', 160, {'tile_m': 160})
        >>> ModelCard.from_json(card.to_json()) == card
        True
    """

    model_id: str
    normalization: dict[str, NormStats] = field(default_factory=dict)
    tile_m: int | None = None

    def with_changes(self, **changes) -> ModelCard:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def metadata(self) -> dict:
        """What changes the model's embeddings besides its weights (statistics, tile size), as
        JSON values; part of the weights hash. Empty for a plain model."""
        out = {}
        if self.normalization:
            out["normalization"] = {k: {"mean": list(v.mean), "std": list(v.std)}
                                    for k, v in sorted(self.normalization.items())}
        if self.tile_m:
            out["tile_m"] = self.tile_m
        return out

    def to_json(self) -> dict:
        """The card's fields as saved in ``config.json``."""
        return {"model_id": self.model_id,
                "normalization": {k: {"mean": list(v.mean), "std": list(v.std), "source": v.source}
                                  for k, v in self.normalization.items()},
                "tile_m": self.tile_m}

    @classmethod
    def from_json(cls, meta: dict, default_id: str = "") -> ModelCard:
        """Read the fields ``to_json`` wrote (missing ones take their defaults)."""
        stats = {k: NormStats(tuple(v["mean"]), tuple(v["std"]), v.get("source", ""))
                 for k, v in (meta.get("normalization") or {}).items()}
        return cls(meta.get("model_id") or default_id, stats, meta.get("tile_m"))
