from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PARITY = FIXTURES / "parity"


def load_fixture(name: str):
    path = PARITY / name
    if not path.is_file():
        pytest.skip(f"parity fixture {path} not present (expected ../shared/fixtures beside the repo)")
    return torch.load(path, weights_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


from stac_fixtures import sample_catalog, stac_api, stac_api_pgstac, t29unu_catalog  # noqa: E402,F401
