"""Bench plumbing for the backends: the per-machine verify-cost cache that sizes drafter trees, and the
near-tie audit of batched rows."""

import torch

from clmkit.backends import make_backend
from clmkit.bench import verify_cost
from clmkit.bench.batch import audit_row
from clmkit.bench.speed import tuned_budgets
from clmkit.engine import Engine
from clmkit.models import Model


def test_verify_cost_is_measured_once_per_machine_then_reused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("CLMKIT_CACHE", str(tmp_path))
    calls = []
    real = verify_cost.measure
    monkeypatch.setattr(verify_cost, "measure", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    costs, origin = verify_cost.cached_costs(tiny_llama, (1, 2, 4), repeats=1)
    assert origin.startswith("measured now") and sorted(costs) == [1, 2, 4] and len(calls) == 1
    key = verify_cost.machine_key(tiny_llama)
    assert key["backend"] == "torch" and key["kernel"] == "hf" and key["cpu"] and key["model"] == tiny_llama.name
    again, origin = verify_cost.cached_costs(tiny_llama, (1, 2), repeats=1)
    assert origin.startswith("cached") and again == costs and len(calls) == 1  # a subset of the saved sizes
    _, origin = verify_cost.cached_costs(tiny_llama, (1, 2, 8), repeats=1)  # 8 was never measured
    assert origin.startswith("measured now") and len(calls) == 2
    packed = Model(tiny_llama.name, tiny_llama.module, tiny_llama.tokenizer, tiny_llama.source, tiny_llama.chat,
                   backend=make_backend("torch", tiny_llama.module, kernel="onednn"))
    assert verify_cost.cache_path(verify_cost.machine_key(packed)) != verify_cost.cache_path(key)


def test_tuned_budgets_follow_the_saved_curve(tiny_llama, tmp_path, monkeypatch):
    """A curve where trees are nearly free picks a big tree; one where cost grows with n picks the
    smallest: the drafters' budgets come from the (saved) measurement, not a constant."""
    monkeypatch.setenv("CLMKIT_CACHE", str(tmp_path))
    key = verify_cost.machine_key(tiny_llama)
    sizes = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    verify_cost.save_costs(key, {n: 1.0 + 0.001 * n for n in sizes}, repeats=1)
    flat = tuned_budgets(tiny_llama, ["lookup", "recycling"], options := {})
    assert flat["nodes"] > 4 and flat["source"].startswith("cached")
    assert options["lookup"]["max_nodes"] == flat["nodes"] and options["recycling"]["budget"] == flat["nodes"]
    verify_cost.save_costs(key, {n: float(n) for n in sizes}, repeats=1)
    steep = tuned_budgets(tiny_llama, ["lookup"], options := {"lookup": {"num_pred": 4}})
    assert steep["nodes"] == 1 and options["lookup"] == {"num_pred": 4, "max_nodes": 2}  # smallest tree


def test_batch_audit_classifies_by_the_backends_bound(tiny_llama):
    backend = make_backend("torch", tiny_llama.module)
    prompt = [3, 4, 5, 6]
    plain = Engine(tiny_llama).complete(prompt, max_new_tokens=6, ignore_eos=True).token_ids
    assert audit_row(backend, prompt, plain, list(plain)) is None
    other = plain[:3] + [(plain[3] + 1) % 100] + plain[4:]
    backend.near_tie = float("inf")
    d = audit_row(backend, prompt, plain, other)
    assert d["kind"] == "near-tie" and d["position"] == 3 and d["got_token"] == other[3] and d["top2_gap"] >= 0
    backend.near_tie = 0.0
    assert audit_row(backend, prompt, plain, other)["kind"] == "DIVERGED"
    logits = backend.sequence(16).prefill(prompt + plain[:3])
    top2 = torch.topk(logits, 2).values
    assert abs(d["top2_gap"] - float(top2[0] - top2[1])) < 1e-5  # the gap of the unbatched run's own logits
