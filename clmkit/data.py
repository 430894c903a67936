"""Where benchmark data lives: `$CLMKIT_DATA`, else the nearest `shared/data` folder above us."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    env = os.environ.get("CLMKIT_DATA")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise FileNotFoundError(
        "benchmark data not found: set CLMKIT_DATA to the folder holding spec_bench/, corr2cause/, ..."
    )


def data_path(*parts: str) -> Path:
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"benchmark data file not found: {path} (set CLMKIT_DATA to override)")
    return path
