import json
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "protocols" / "vectors"


@pytest.fixture(scope="session")
def published():
    return json.loads((VECTORS / "secagg_published.json").read_text())
