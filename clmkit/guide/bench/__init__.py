"""Benchmarks of the guides (not plug-ins): momentum vs greedy / top-p / contrastive search,
grammar-constrained decoding with drafters, rectification."""

from pathlib import Path


def plot_bars(summary: dict, panels: list[tuple[str, str]], path: Path, title: str, baseline: float | None = None) -> None:
    """One bar panel per (metric key, panel title), one bar per method of `summary` (method -> metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    names = list(summary)
    colors = ["#888", "#48c", "#5a8", "#c84", "#a5c"]
    for ax, (key, label) in zip(axes[0], panels):
        ax.bar(names, [summary[n][key] for n in names], color=[colors[i % len(colors)] for i in range(len(names))])
        if baseline is not None:
            ax.axhline(baseline, color="grey", lw=1)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
