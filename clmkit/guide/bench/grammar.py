"""`clm bench guided`: grammar-constrained decoding, plain vs with drafters, on JSON extraction.

Each prompt states the facts the JSON must hold ("Extract ... as JSON: <text>"), so drafting from the
prompt (lookup) and from the model's own recent predictions (recycling, adaptive) should pay. Methods
run interleaved per prompt, greedy; every drafter's output is checked token-identical to constrained
plain decoding. The grammar's cost is timed inside the guide (every mask it computes, tree walks
included) and reported per committed token and as a share of a decode step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from clmkit.drafters import make_drafter
from clmkit.engine import Engine
from clmkit.guide.bench import plot_bars
from clmkit.guide.grammar import Grammar
from clmkit.models import load

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "occupation": {"type": "string"},
        "city": {"type": "string"}, "employer": {"type": "string"}, "start_year": {"type": "integer"},
    },
    "required": ["name", "age", "occupation", "city", "employer", "start_year"],
    "additionalProperties": False,
}
PEOPLE = [
    ("Maria Lopez", 34, "software engineer", "Madrid", "Acme Corporation", 2015),
    ("Kenji Watanabe", 51, "civil engineer", "Osaka", "Hanshin Bridges", 1998),
    ("Amara Okafor", 27, "data analyst", "Lagos", "Sunrise Logistics", 2021),
    ("Lukas Becker", 42, "high school teacher", "Hamburg", "Elbe Gymnasium", 2009),
    ("Priya Raman", 38, "cardiologist", "Chennai", "Marina Heart Institute", 2012),
    ("Tom Hughes", 60, "bakery owner", "Cardiff", "Hughes Family Bakery", 1987),
    ("Sofia Rossi", 29, "architect", "Turin", "Studio Po Architetti", 2019),
    ("Omar Haddad", 45, "airline pilot", "Amman", "Royal Desert Airways", 2003),
]
METHODS = ("plain", "lookup", "recycling", "adaptive")


def prompt_for(person) -> str:
    name, age, job, city, employer, year = person
    text = (f"{name} is a {age}-year-old {job} who lives in {city}. {name.split()[0]} has worked for {employer} "
            f"since {year}.")
    return ("Extract the person's name, age, occupation, city, employer and start_year from the text below "
            f"as a JSON object.\n\nText: {text}")


class TimedGrammar(Grammar):
    """The grammar guide, timing every mask it computes (the tree walk's masks included)."""

    seconds = 0.0
    calls = 0

    def allowed(self):
        start = time.perf_counter()
        row = super().allowed()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return row


def run_guided_bench(model_name: str, prompts: int, max_new_tokens: int, output: Path, command: str,
                     methods=METHODS) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    model = load(model_name)
    engine = Engine(model)
    rows = []
    people = (PEOPLE * (1 + prompts // len(PEOPLE)))[:prompts]
    drafters = {m: make_drafter(m, model) for m in methods if m != "plain"}  # recycling stays warm across prompts
    with Progress() as bar:
        task = bar.add_task("guided bench", total=len(people) * len(methods))
        for person in people:
            ids = engine.encode(prompt_for(person))
            reference = None
            for method in methods:
                guide = TimedGrammar(model, json_schema=SCHEMA)
                out = engine.complete(ids, max_new_tokens=max_new_tokens, guide=guide, drafter=drafters.get(method))
                if method == "plain":
                    reference = out.token_ids
                s = out.stats
                try:
                    parsed = json.loads(out.text)
                except ValueError:
                    parsed = None
                rows.append({
                    "person": person[0], "method": method, "new_tokens": s.new_tokens, "decode_s": s.decode_s,
                    "target_forwards": s.target_forwards, "mean_accepted": s.mean_accepted,
                    "decode_tokens_per_s": s.decode_tokens_per_s, "mask_s": guide.seconds, "masks": guide.calls,
                    "identical_to_plain": None if reference is None else out.token_ids == reference,
                    "finish_reason": out.finish_reason, "incomplete": out.incomplete,
                    "valid_json": parsed is not None, "facts_right": parsed is not None and str(person[1]) in out.text
                    and person[4] in out.text, "text": out.text,
                })
                bar.advance(task)
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        decode_s = sum(r["decode_s"] for r in mine)
        tokens = sum(r["new_tokens"] - 1 for r in mine)
        steps = sum(r["target_forwards"] for r in mine)
        summary[method] = {
            "decode_tokens_per_s": tokens / decode_s if decode_s else 0.0,
            "mean_accepted": sum(r["mean_accepted"] * r["target_forwards"] for r in mine) / max(1, steps),
            "mask_ms_per_token": 1000 * sum(r["mask_s"] for r in mine) / max(1, sum(r["new_tokens"] for r in mine)),
            "mask_share_of_step": sum(r["mask_s"] for r in mine) / decode_s if decode_s else 0.0,
            "identical_to_plain": all(r["identical_to_plain"] is not False for r in mine),
            "valid_json": sum(r["valid_json"] for r in mine), "prompts": len(mine),
        }
    base = summary[methods[0]]["decode_tokens_per_s"] or 1.0
    for s in summary.values():
        s["speedup_vs_plain"] = s["decode_tokens_per_s"] / base
    result = {"command": command, "model": model.name, "schema": SCHEMA, "prompts": len(people),
              "max_new_tokens": max_new_tokens, "summary": summary, "rows": rows}
    output.mkdir(parents=True, exist_ok=True)
    (output / "guided.json").write_text(json.dumps(result, indent=1))
    table = Table("method", "tokens/s", "speedup", "MAT", "mask ms/token", "mask share", "identical", "valid JSON")
    for m, s in summary.items():
        table.add_row(m, f"{s['decode_tokens_per_s']:.1f}", f"{s['speedup_vs_plain']:.2f}x", f"{s['mean_accepted']:.2f}",
                      f"{s['mask_ms_per_token']:.3f}", f"{100 * s['mask_share_of_step']:.1f}%",
                      str(s["identical_to_plain"]), f"{s['valid_json']}/{s['prompts']}")
    Console().print(table)
    plot_bars(summary, [("speedup_vs_plain", "decode speed vs constrained plain"), ("mean_accepted", "tokens per target forward (MAT)")],
              output / "guided.png", f"{model.name}: JSON extraction, {len(people)} prompts, greedy")
    return result
