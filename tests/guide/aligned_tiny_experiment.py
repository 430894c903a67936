"""The ASAp KL experiment on the tiny random Llama of tests/conftest.py (docs/guided.md, Grammar-Aligned Decoding).

    PYTHONPATH=. .venv/bin/python tests/guide/aligned_tiny_experiment.py

Writes docs/results/guided-aligned-tiny/result.json and docs/img/guided-aligned-tiny.png. The target is
memoised per token path (tests/drafters/harness.PathMemo) so 2 x 2,000 samples take seconds.
"""

import json
from pathlib import Path

from clmkit.engine import Engine
from clmkit.guide.aligned import kl_curves
from clmkit.guide.cli import plot_kl
from clmkit.models import Model
from tests.conftest import make_module, make_tokenizer
from tests.drafters.harness import memoised_pair

CHOICES = ["ab", "abc", "abd", "ba", "bcd", "dc"]

if __name__ == "__main__":
    tok = make_tokenizer()
    target, _ = memoised_pair(Model("tiny-llama", make_module("llama", len(tok)), tok, Path("."), False))
    result = kl_curves(Engine(target), tok("the lazy dog")["input_ids"], 2000, seed=0, choice=CHOICES)
    result["command"] = "PYTHONPATH=. .venv/bin/python tests/guide/aligned_tiny_experiment.py"
    result["model"] = "tiny random Llama (tests/conftest.py, seed 0)"
    out = Path("docs/results/guided-aligned-tiny")
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    plot_kl(result, "tiny random Llama: 6-way choice, exact law by enumeration", Path("docs/img/guided-aligned-tiny.png"))
    print(json.dumps({k: result[k] for k in ("n", "constrained", "aligned", "kl_exact_vs_constrained_law")}))
