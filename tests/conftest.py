"""Shared fixtures: the real CIFAR-10 archive from ../shared (or ABLATION_DATA), temp MLflow stores."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-10-python.tar.gz"


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    """Path of the real CIFAR-10 archive; tests that need it fail loudly if it is missing."""
    path = Path(os.environ.get("ABLATION_DATA", SHARED_ARCHIVE))
    if not path.exists():
        pytest.fail(f"CIFAR-10 not found at {path}: set ABLATION_DATA or put the archive in ../shared/data/")
    return path
