"""A linear-probe run on the shared WorldCereal crop labels."""

from helpers.paths import FIXTURES
from xanysat.apps.finetune import FinetuneConfig

LABELS = FIXTURES / "real" / "worldcereal" / "worldcereal_cropland_classification.nc"


def config(out, **changes):
    base = dict(out_dir=str(out), labels=str(LABELS), label_crs="EPSG:32631", model="untrained-tiny", epochs=2,
                tile_m=200, patch_size=40, batch_size=4)
    return FinetuneConfig(**{**base, **changes})
