"""The code stays ruff-clean (part of the one test command, so CI checks it too)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    r = subprocess.run(["ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
