"""The benchmarks' batched loops give every row the tokens it gets alone (clmkit/guide/bench/rows.py,
contrastive.py): greedy, top-p with per-row seeds, momentum, a grammar, contrastive search."""

import pytest

from clmkit.engine import Engine
from clmkit.guide import make_guide
from clmkit.guide.bench.contrastive import contrastive_search_batch
from clmkit.guide.bench.rows import decode_rows, length_groups
from clmkit.sampling import Sampling

PROMPTS = [[5, 6, 7, 8] * 3, [9, 10, 11], [12, 5, 30, 31, 32, 33, 34, 9, 9, 40, 41]]  # different lengths: padding


@pytest.mark.parametrize("kind", ["greedy", "top-p", "momentum", "grammar"])
def test_rows_match_engine_alone(tiny_llama, kind):
    sampling = [Sampling(temperature=1.0, top_p=0.9, seed=s) if kind == "top-p" else Sampling() for s in range(len(PROMPTS))]
    guide = {"momentum": lambda: make_guide("momentum", tiny_llama),
             "grammar": lambda: make_guide("grammar", tiny_llama, regex=r"[a-e ]{1,30}")}.get(kind, lambda: None)
    engine = Engine(tiny_llama)
    alone = [engine.complete(p, max_new_tokens=24, sampling=s, guide=guide()).token_ids for p, s in zip(PROMPTS, sampling)]
    together = decode_rows(engine, PROMPTS, 24, sampling, [guide() for _ in PROMPTS])
    assert together == alone
    assert len({tuple(t) for t in together}) > 1  # the rows did not collapse onto one output


def test_contrastive_batch_matches_alone(tiny_llama):
    module = tiny_llama.module
    alone = [contrastive_search_batch(module, [p], 16, alpha=0.6, k=4)[0] for p in PROMPTS]
    assert contrastive_search_batch(module, PROMPTS, 16, alpha=0.6, k=4) == alone
    greedy = Engine(tiny_llama).complete(PROMPTS[0], max_new_tokens=16, ignore_eos=True).token_ids
    assert contrastive_search_batch(module, PROMPTS[:1], 16, alpha=0.0, k=4)[0] == greedy  # alpha 0 is greedy
    assert alone[0] != greedy  # and alpha 0.6 is not (the degeneration penalty acts)


def test_length_groups_pack_by_length_and_slots():
    groups = length_groups([5, 1, 40, 3, 2, 30], lambda n: n, batch=3, max_slots=60)
    assert groups == [[1, 2, 3], [5, 30], [40]]  # full at 3 rows; 2 x 40 slots > 60
