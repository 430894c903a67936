"""Tests that read the real benchmark files skip cleanly when the data folder is absent."""

from __future__ import annotations

import pytest


@pytest.fixture
def require_data():
    """require_data("cladder", "cladder_public.csv") -> the path, or skip the test."""
    from clmkit.data import data_dir

    def check(*parts: str):
        try:
            path = data_dir().joinpath(*parts)
        except FileNotFoundError:
            pytest.skip("benchmark data not found (set CLMKIT_DATA)")
        if not path.exists():
            pytest.skip(f"benchmark data file not found: {path}")
        return path

    return check
