import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


from helpers.stac_fixtures import sample_catalog, stac_api, stac_api_pgstac, t29unu_catalog  # noqa: E402,F401
from helpers.worldcereal_truth import truth  # noqa: E402,F401
