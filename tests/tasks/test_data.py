"""Where data comes from: $CLMKIT_DATA / shared/data, and the Spec-Bench copy bundled in the package."""

from __future__ import annotations

import hashlib

import pytest

from clmkit import data
from clmkit.bench.specbench import SPECBENCH_CATEGORIES, load_specbench


@pytest.fixture
def no_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CLMKIT_DATA", str(tmp_path / "nonexistent"))


def test_specbench_falls_back_to_the_bundled_copy(no_data_folder):
    path = data.data_path("spec_bench", "question.jsonl")
    assert path == data.BUNDLED_DIR / "spec_bench" / "question.jsonl"
    assert (path.parent / "LICENSE").read_text().startswith("Apache License")
    assert "hemingkx/Spec-Bench @ fd2c1cd" in (path.parent / "README.md").read_text()
    prompts = load_specbench(per_category=None)
    assert len(prompts) == 480 and {p.category for p in prompts} == set(SPECBENCH_CATEGORIES)
    assert len(load_specbench(2)) == 2 * len(SPECBENCH_CATEGORIES)


def test_other_data_is_a_clear_error_naming_clmkit_data(no_data_folder):
    with pytest.raises(FileNotFoundError, match="CLMKIT_DATA"):
        data.data_path("cladder", "cladder_public.csv")
    with pytest.raises(FileNotFoundError, match="CLMKIT_DATA"):
        data.data_path("spec_bench", "not-a-file.jsonl")


def test_the_data_folder_wins_and_the_bundled_copy_is_verbatim(require_data):
    bundled = data.BUNDLED_DIR / "spec_bench" / "question.jsonl"
    shared = require_data("spec_bench", "question.jsonl")
    if shared == bundled:
        pytest.skip("no data folder holding spec_bench/ (set CLMKIT_DATA to the shared/data folder)")
    assert hashlib.sha256(shared.read_bytes()).digest() == hashlib.sha256(bundled.read_bytes()).digest()
