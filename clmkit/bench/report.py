"""Benchmark output: a JSON file, a Markdown table, and the same table in the terminal."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_dir(base: Path | None, kind: str) -> Path:
    out = base or Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(title: str, columns: list[str], rows: list[dict], console: Console | None = None) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in ("category", "method", "prompt") else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c, "")) for c in columns))
    (console or Console()).print(table)


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
