"""Tests that read the real benchmark files skip cleanly when the data folder is absent."""

from __future__ import annotations

import pytest


@pytest.fixture
def require_data():
    """require_data("cladder", "cladder_public.csv") -> the path, or skip the test naming CLMKIT_DATA."""
    from clmkit.data import data_path

    def check(*parts: str):
        try:
            return data_path(*parts)
        except FileNotFoundError as e:
            pytest.skip(f"real benchmark data not available ({e}); set CLMKIT_DATA to the shared/data folder")

    return check
