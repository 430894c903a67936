"""One figure for docs/prompting.md from the runs' summary JSONs (what `clm eval code|recall|
position-bias|judge|compress` write), four panels with their 95% intervals:

    python -m clmkit.prompting.figure docs/img/prompting-scale.png runs/prompting/scale runs/prompting/code-n30

SeCoT pass@1 per strategy (Wilson) | JRT recall accuracy plain vs JRT (Wilson) |
PINE: share of items answered the same in every option order, plain vs PINE (Wilson) |
compression: answer NLL/token vs kept-token rate per method (mean ± 1.96 SE).
A panel whose runs are missing says so instead of drawing nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLORS = {"plain": "#8c8c8c", "cot": "#dd8452", "secot": "#4c72b0", "fewshot": "#937860", "jrt": "#4c72b0",
          "pine": "#4c72b0", "full": "#222222", "llmlingua2": "#4c72b0", "selfinfo": "#55a868", "random": "#c44e52"}


def summaries(folders: list[Path]) -> list[dict]:
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.summary.json")):
            found.append({"file": path.name, **json.loads(path.read_text(encoding="utf-8"))})
    return found


def _grouped(ax, groups: list[str], series: dict[str, list[tuple[float, tuple[float, float]] | None]], ylabel: str):
    width = 0.8 / max(1, len(series))
    for k, (name, points) in enumerate(series.items()):
        for g, point in enumerate(points):
            if point is None:
                continue
            value, (low, high) = point
            x = g + (k - (len(series) - 1) / 2) * width
            ax.plot([x], [value], marker="_", color="black", ms=8)  # a zero bar is still visible
            ax.bar(x, value, width, color=COLORS.get(name, None),
                   yerr=[[value - low], [high - value]], capsize=3, label=name if g == next(
                       i for i, p in enumerate(points) if p is not None) else None)
    ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} runs found", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def draw(found: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    code = [s for s in found if "dataset" in s]
    if code:
        names = list(dict.fromkeys(r["strategy"] for s in code for r in s["rows"]))
        series = {n: [next(((r["pass@1"], tuple(r["ci95"])) for r in s["rows"] if r["strategy"] == n), None)
                      for s in code] for n in names}
        several = len({s.get("model") for s in code}) > 1  # then each group names its model
        _grouped(axes[0, 0], [f"{s['dataset']}{', ' + s['model'] if several else ''} (n={s['n']})" for s in code],
                 series, "pass@1")
        axes[0, 0].set_title("SeCoT: pass@1, one greedy sample", fontsize=9)
    else:
        _empty(axes[0, 0], "code")
    recall = [s for s in found if "pairs" in s and "rows" in s and s["rows"] and "task" in s["rows"][0]]
    if recall:
        rows = recall[0]["rows"]
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        series = {m: [next(((r["accuracy"], tuple(r["ci95"])) for r in rows if r["task"] == t and r["method"] == m),
                           None) for t in tasks] for m in ("plain", "jrt")}
        groups = [f"{t} (n={next(r['n'] for r in rows if r['task'] == t)})" for t in tasks]
        _grouped(axes[0, 1], groups, series, "accuracy")
        axes[0, 1].set_title("JRT: recall accuracy, input read once vs twice", fontsize=9)
    else:
        _empty(axes[0, 1], "recall")
    position = [s for s in found if "orders" in s] + [s for s in found if s["file"].startswith("judge__")]
    if position:
        groups, series = [], {"plain": [], "pine": []}
        for s in position:
            label = f"{s['task']}, {s['score']}" if "task" in s else "judge A/B swap"
            groups.append(f"{label} (n={s['rows'][0]['n']})")
            for r in s["rows"]:
                series[r["method"]].append((r["consistency"], tuple(r["consistency_ci95"])))
        _grouped(axes[1, 0], groups, series, "same answer in every order")
        axes[1, 0].set_title("PINE: order consistency", fontsize=9)
    else:
        _empty(axes[1, 0], "position-bias")
    compress = [s for s in found if "rate" in s and "source" in s]
    if compress:
        ax = axes[1, 1]
        for source, marker in (("gsm8k", "o"), ("summarization", "s")):
            runs = sorted((s for s in compress if s["source"] == source), key=lambda s: -s["rate"])
            full = [(r["rate_achieved"], r["answer_nll"], r["answer_nll_ci95"]) for s in runs[:1] for r in s["rows"]
                    if r["method"] == "full"]
            for k, method in enumerate(("full", "llmlingua2", "selfinfo", "random")):
                points = [(r["rate_achieved"], r["answer_nll"], r["answer_nll_ci95"]) for s in runs for r in s["rows"]
                          if r["method"] == method]
                if not points:
                    continue
                points = full if method == "full" else full + points  # each curve starts at the full prompt
                xs, ys, cis = zip(*points)
                xs = [x + 0.006 * (k - 1.5) for x in xs]  # methods share the rates: nudge apart to see the bars
                ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                            marker=marker, color=COLORS[method], capsize=3, ls="-" if source == "gsm8k" else ":",
                            label=f"{method}, {source} (n={'/'.join(str(s['rows'][0]['n']) for s in runs)})")
        ax.set_xlabel("kept tokens (achieved rate)", fontsize=8)
        ax.set_ylabel("answer NLL / token (lower = better)", fontsize=8)
        ax.set_title("Compression: answer likelihood vs rate", fontsize=9)
        ax.legend(fontsize=6)
    else:
        _empty(axes[1, 1], "compression")
    models = ", ".join(dict.fromkeys(s["model"] for s in found if s.get("model"))) or "?"
    fig.suptitle(f"Prompting papers on {models} (95% intervals)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m clmkit.prompting.figure OUT.png RUN_FOLDER [RUN_FOLDER ...]")
    draw(summaries([Path(a) for a in argv[1:]]), Path(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
