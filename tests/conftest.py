"""Test set-up: real datasets from ../shared/data when present, a private cache, few threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests may read the project's shared copies; the product itself never assumes this path.
if "MORTAL_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["MORTAL_DATA"] = str(SHARED_DATA)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def data_dir() -> Path | None:
    """The parent folder of the real datasets, or None (tests that need it skip)."""
    p = Path(os.environ.get("MORTAL_DATA", ""))
    return p if p.is_dir() and (p / "mnist").is_dir() else None


needs_mnist = pytest.mark.skipif(data_dir() is None, reason="real MNIST not found (MORTAL_DATA)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Nothing a test does lands in the user's ~/.cache."""
    monkeypatch.setenv("MORTAL_CACHE", str(tmp_path_factory.mktemp("cache")))
