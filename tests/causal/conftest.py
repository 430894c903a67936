"""Shared fixtures for the causal tests: the real benchmark files (skipped when absent)."""

from __future__ import annotations

import csv
import json

import pytest


def _data(*parts: str):
    from clmkit.data import data_path

    try:
        return data_path(*parts)
    except FileNotFoundError as e:
        pytest.skip(f"real benchmark data not available ({e}); set CLMKIT_DATA to the shared/data folder")


@pytest.fixture(scope="session")
def corr2cause_rows() -> list[dict]:
    with open(_data("corr2cause", "test_public.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def counterbench_rows() -> list[dict]:
    with open(_data("counterbench", "counterbench_public.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
