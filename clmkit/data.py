"""Where benchmark data lives: `$CLMKIT_DATA`, else the nearest `shared/data` folder above us.

A few small files the CLI's defaults need ship inside the package, in the same layout, under
`clmkit/bundled/` (each with its upstream LICENSE and provenance): `data_path` falls back to them
when the data folder is absent or lacks the file, so `clm bench` works in a fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"  # spec_bench/question.jsonl (Apache-2.0)


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
    """The data file `parts` (e.g. "cladder", "cladder_public.csv"), else its bundled copy, else
    FileNotFoundError naming CLMKIT_DATA."""
    try:
        path = data_dir().joinpath(*parts)
    except FileNotFoundError as e:
        path, missing = None, str(e)
    else:
        missing = f"benchmark data file not found: {path} (set CLMKIT_DATA to the folder holding it)"
    if path is not None and path.exists():
        return path
    bundled = BUNDLED_DIR.joinpath(*parts)
    if parts and bundled.is_file():
        return bundled
    raise FileNotFoundError(missing)
