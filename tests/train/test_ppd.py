"""`ppd` (Parallel Prompt Decoding): the prompt tokens that ride along in the verify forward, the
training windows, the dynamic sparse trees and their hardware-aware size, and losslessness.
Greedy parity with random prompts on three architectures: tests/train/test_trained_drafters.py."""

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.drafters import budget_options, make_drafter
from clmkit.drafters import ppd
from clmkit.errors import InputError
from clmkit.sampling import Sampling, target_probs
from clmkit.train import module_class
from clmkit.train.loop import TargetParts, TrainConfig, train
from clmkit.tree import EmbeddingNodes, TokenTree
from clmkit.verify import Verdict, verify
from tests.drafters.harness import assert_greedy_parity
from tests.stats import ALPHA, chisquare_pvalue

CONTEXT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
RATES = [[0.4 * 0.6 ** d * 0.5 ** r for r in range(10)] for d in range(3)]  # rank-r right at depth d+1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@torch.inference_mode()  # the engine's mode: cache buffers are inference tensors
def test_prompt_nodes_ride_along_and_leave_no_trace(tiny_models, arch):
    """Embedding nodes hung below tree nodes: the tree's logits are unchanged, each prompt node gets the
    logits of its path decoded alone, and after keep() the cache holds the accepted path only."""
    model = tiny_models[arch]
    prefix = [5, 6, 7, 8, 9, 10]
    tree = TokenTree(torch.tensor([11, 12, 13, 14]), torch.tensor([-1, 0, 0, 1]))
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 64, generator=g) * 0.5
    extra = EmbeddingNodes(embeds, torch.tensor([3, 4, 2]))  # chain of 2 below node 3, one below node 2
    seq = model.runner().sequence(32)
    seq.prefill(prefix)
    plain = seq.tree(tree)
    seq.truncate(len(prefix))
    logits = seq.tree(tree, extra=extra)
    assert torch.allclose(logits, plain, atol=1e-5)
    embed = model.module.get_input_embeddings()
    for row, path, rows in [(0, [11, 12, 14], [0]), (1, [11, 12, 14], [0, 1]), (2, [11, 13], [2])]:
        x = torch.cat([embed(torch.tensor(prefix + path)), embeds[rows]])[None]
        want = model.module(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).logits[0, -1]
        assert torch.allclose(seq.extra_logits[row], want, atol=1e-4), row
    seq.keep([0, 1, 3])
    assert seq.length == len(prefix) + 3
    after = seq.tree(TokenTree.root(15))
    seq2 = model.runner().sequence(32)
    seq2.prefill(prefix + [11, 12, 14])
    assert torch.allclose(after[0], seq2.tree(TokenTree.root(15))[0], atol=1e-4)


def test_training_windows_equal_separate_forwards(tiny_models):
    """One joint training forward (window tokens + a prompt chain per anchor, 4-D mask) gives each
    anchor's prompt logits exactly as appending the prompts right after that anchor would."""
    model = tiny_models["llama"]
    parts = TargetParts.of(model.module)
    parts.head_bf16 = None  # compare in fp32
    torch.manual_seed(0)
    module = ppd.PromptTokens(parts, tokens=3)
    tokens = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 10:] = False  # padding is never seen
    anchors = torch.tensor([[3, 7, -1], [0, 5, 9]])
    with torch.no_grad():
        got = module.joint_logits(tokens, valid, anchors)
        for b, a in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]:
            t = int(anchors[b, a])
            x = torch.cat([parts.embed[tokens[b, : t + 1]], module.prompts])[None]
            want = model.module(inputs_embeds=x, position_ids=torch.arange(t + 4)[None]).logits[0, -3:]
            assert torch.allclose(got[b, a], want, atol=1e-4), (b, a)


def test_loss_goes_down_and_checkpoint_round_trips(tiny_llama, tiny_cache, tmp_path):
    weights = tmp_path / "ppd.safetensors"
    torch.manual_seed(0)
    module = module_class("ppd")(TargetParts.of(tiny_llama.module), anchors=8)
    held_back = tiny_cache.eval_batches(8, 32)[0]
    with torch.no_grad():
        before = float(module.loss(held_back)[0])
    cfg = TrainConfig(steps=30, batch_size=8, length=32, lr=3e-2, warmup=5, eval_every=30, eval_batches=1)
    config = train(module, tiny_llama, tiny_cache, weights, cfg, "test", quiet=True)
    assert not any(p.requires_grad for p in tiny_llama.module.parameters())  # the target stayed frozen
    tiny_llama.module.requires_grad_(True)
    with torch.no_grad():
        after = float(module.loss(held_back)[0])
    assert after < 0.95 * before, (before, after)  # distillation loss on a held-back batch
    assert len(config["rank_probs"]) == 3 and set(config["options"]) == {"tokens", "anchors"}
    drafter = make_drafter("ppd", tiny_llama, checkpoint=str(weights), budget=8)
    assert torch.equal(drafter.module.prompts, module.prompts.detach().half().float())
    out = assert_greedy_parity(tiny_llama, drafter, [7, 8, 9, 10, 7, 8], max_new_tokens=32)
    assert out.stats.draft_tokens > 0
    from clmkit.models import Model
    from tests.conftest import make_module

    wider = Model("tiny-wide", make_module("llama", len(tiny_llama.tokenizer), hidden_size=96), tiny_llama.tokenizer,
                  tiny_llama.source, False)
    with pytest.raises(InputError, match="hidden size 64"):
        make_drafter("ppd", wider, checkpoint=str(weights))


@torch.inference_mode()
def primed(model, context, sampling, budget=12):
    """A ppd drafter in state K (three prompt logits seen), the target's own top-10 as candidates so
    that drafts get accepted, its tree and the verify forward's logits (prompt nodes included)."""
    drafter = make_drafter("ppd", model, checkpoint="random", budget=budget)
    drafter.plan = ppd.plan_for_size(RATES, 3, budget + 1, lambda n: 1.0)  # realistic rates, not the placeholder
    drafter.begin(context[:-1], sampling)
    seq = model.runner().sequence(64)
    seq.prefill(context[:-1])
    top = model.module(input_ids=torch.tensor([context])).logits[0, -1].topk(10).indices
    drafter.candidates = torch.stack([top, top.roll(1), top.roll(2)])
    tree = drafter.propose(context)
    extra = drafter.extra_nodes(tree)
    assert len(tree) > 4 and extra is not None and len(extra) > 0
    logits = seq.tree(tree, extra=extra)
    return drafter, tree, logits, seq


def committed(tree, logits, sampling, trials, verifier=verify):
    g = torch.Generator().manual_seed(0)
    vocab = logits.shape[-1]
    first, after = torch.zeros(vocab), {}
    for _ in range(trials):
        v = verifier(tree, logits, sampling, g)
        first[v.tokens[0]] += 1
        if len(v.tokens) > 1:
            after.setdefault(v.tokens[0], torch.zeros(vocab))[v.tokens[1]] += 1
    return first, after


def check_target_law(model, context, first, after, sampling):
    with torch.inference_mode():
        p1 = target_probs(model.module(input_ids=torch.tensor([context])).logits[0, -1], sampling)
        assert first[p1 == 0].sum() == 0
        assert chisquare_pvalue(first[p1 > 0], p1[p1 > 0]) > ALPHA
        t1, counts = max(after.items(), key=lambda kv: kv[1].sum())
        assert counts.sum() >= 500
        p2 = target_probs(model.module(input_ids=torch.tensor([context + [t1]])).logits[0, -1], sampling)
        assert counts[p2 == 0].sum() == 0
        assert chisquare_pvalue(counts[p2 > 0], p2[p2 > 0]) > ALPHA


def test_sampling_matches_target(tiny_llama):
    """8,000 verifications of a ppd tree whose forward carried prompt nodes: the committed first and
    second tokens follow the target's distribution (the tree is a deterministic function of the
    context and the previous step's prompt logits, so one forward serves every trial)."""
    sampling = Sampling(temperature=0.8, top_k=40, seed=0)
    _, tree, logits, _ = primed(tiny_llama, CONTEXT, sampling)
    first, after = committed(tree, logits, sampling, 8000)
    check_target_law(tiny_llama, CONTEXT, first, after, sampling)


def test_sampling_negative_control(tiny_llama):
    """The same check catches a verifier that accepts every first draft."""
    sampling = Sampling(temperature=0.8, top_k=40, seed=0)
    _, tree, logits, _ = primed(tiny_llama, CONTEXT, sampling)

    def accept_first_child(tree, logits, sampling, generator):
        child = tree.children[0][0]
        return Verdict([0, child], [int(tree.tokens[child]), int(logits[child].argmax())])

    first, after = committed(tree, logits, sampling, 3000, accept_first_child)
    with pytest.raises(AssertionError):
        check_target_law(tiny_llama, CONTEXT, first, after, sampling)


def test_next_candidates_come_from_the_accepted_nodes_prompts(tiny_llama):
    drafter, tree, logits, seq = primed(tiny_llama, CONTEXT, Sampling())
    rows = dict(drafter.rows)
    node = max(rows, key=lambda j: (len(rows[j]), j))  # the deepest node carrying the most prompts
    drafter.observe_extra(seq.extra_logits)
    drafter.observe(tree, logits, Verdict(tree.path_to(node), []))
    assert torch.equal(drafter.candidates, seq.extra_logits[rows[node]].topk(ppd.TOPK, -1).indices)
    nxt = drafter.propose(CONTEXT + [1])
    assert int(nxt.depth.max()) <= len(rows[node])
    assert set(nxt.tokens[nxt.depth == 1].tolist()) <= set(drafter.candidates[0].tolist())
    drafter, tree, logits, seq = primed(tiny_llama, CONTEXT, Sampling())
    bare = len(tree) - 1
    drafter.rows.pop(bare, None)  # the accepted path ends at a node that carried no prompts
    drafter.observe_extra(seq.extra_logits)
    drafter.observe(tree, logits, Verdict(tree.path_to(bare), []))
    assert drafter.candidates is None and len(drafter.propose(CONTEXT + [1])) == 1


def test_allocation_drops_prompts_of_unlikely_nodes_first():
    # removal costs P(last) * (value[m] - value[m-1]): node 3's whole chain, then node 2's two deepest,
    # then node 1's deepest (0.3 * 0.2 = 0.06 < node 2's last, 0.15 * 0.5)
    counts = ppd.allocate([0.5, 0.3, 0.15, 0.05], budget=6, value=[1.0, 1.5, 1.8, 2.0])
    assert counts == [3, 2, 1, 0]
    assert ppd.allocate([0.5, 0.3, 0.2], budget=9, value=[1, 2, 3, 4]) == [3, 3, 3]


def test_tree_size_follows_the_measured_verify_cost():
    """Hardware-aware: a flat verify cost (an accelerator) buys a large tree, a steep one (this kind of
    CPU) a small one, for the same acceptance rates."""
    rates = RATES
    sizes = (1, 2, 4, 8, 16, 24)
    flat = ppd.best_plan(rates, 3, {n: 1.0 + 0.001 * n for n in sizes})
    steep = ppd.best_plan(rates, 3, {n: 1.0 + 0.5 * (n - 1) for n in sizes})
    assert flat.size >= 12 and steep.size <= 4, (flat.size, steep.size)
    assert flat.tokens_per_step > steep.tokens_per_step >= 1 - 1e-9
    for plan in (flat, steep):
        assert all(t.size <= plan.size for t in plan.trees)
        assert all(abs(sum(t.next_state) - 1) < 1e-6 for t in plan.trees)


def test_verify_cost_is_measured_once_per_machine(tiny_llama, tmp_path, monkeypatch):
    calls = []

    def fake_measure(model, sizes, **options):
        calls.append(sizes)
        return {n: 0.01 * (1 + 0.05 * n) for n in sizes}

    from clmkit.bench import verify_cost

    original = verify_cost.cache_path  # conftest already points it at a session folder: use our own
    monkeypatch.setattr(verify_cost, "cache_path", lambda key: tmp_path / "verify-cost" / original(key).name)
    monkeypatch.setattr("clmkit.bench.verify_cost.measure", fake_measure)
    first = make_drafter("ppd", tiny_llama, checkpoint="random")
    second = make_drafter("ppd", tiny_llama, checkpoint="random")
    assert len(calls) == 1 and first.verify_cost == second.verify_cost
    assert first.plan.size == second.plan.size > 1
    assert first.describe()["forward_size"] == first.plan.size and first.describe()["verify_cost_ms"]
    assert list((tmp_path / "verify-cost").glob("*.json"))


def test_bad_input_is_a_clear_error(tiny_llama, monkeypatch):
    fake = SimpleNamespace(runner=lambda: SimpleNamespace(name="llama.cpp"))
    with pytest.raises(InputError, match="torch backend"):
        ppd.PPDDrafter(fake)
    with pytest.raises(InputError, match="tokens must be"):
        make_drafter("ppd", tiny_llama, checkpoint="random", tokens=0, budget=4)
    with pytest.raises(InputError, match="-O budget=8"):  # sizes itself: --tree-budget / bench --tune skip it
        budget_options("ppd", 8)
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    bad = CliRunner().invoke(cli.app, ["train", "ppd", "-O", "tokens=0", "--cache", "/nonexistent"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
