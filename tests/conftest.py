import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
os.environ["HWPRUNE_TIMING"] = "fast"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own latency cache and example cache."""
    monkeypatch.setenv("HWPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HWPRUNE_TIMING", "fast")


@pytest.fixture
def tiny_file():
    return str(HERE / "tiny_models.py")
