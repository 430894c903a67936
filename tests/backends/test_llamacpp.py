"""The llama.cpp backend on the shipped GGUF: parity with llama-cpp-python's own generation, lossless
speculative decoding (greedy and sampling), batching, limits."""

import pytest
import torch

from clmkit.backends import tree_leaves
from clmkit.drafters import make_drafter
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.models import EMBEDDED
from clmkit.parity import first_divergence, last_logits
from clmkit.sampling import Sampling, target_probs
from clmkit.tree import TokenTree
from clmkit.verify import verify_sampling
from tests.stats import ALPHA, chisquare_pvalue

pytestmark = pytest.mark.embedded

# llama.cpp's quantized kernels round differently for a 1-token decode than for a multi-token batch
# (a tree), and the Q8 quantization of activations turns rounding differences into whole quantization
# steps: on the shipped Q4_1 GGUF we measured logits differing by up to 0.45 between the two (never
# between a tree and the same paths batched: those are bitwise equal). A divergence from plain greedy
# is excused only when the reference's top-2 logit gap is below this bound; each one is printed.
NEAR_TIE_LLAMACPP = 0.5  # = LlamaCppBackend.near_tie
PROMPTS = [
    "Repeat this list exactly: apples, pears, plums, apples, pears, plums, apples, pears.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\nWrite def mul(a, b) in the same style.",
]


def check_parity(backend, prompt_ids, reference, got, label) -> int:
    """0 if identical, 1 for a reported near-tie; fails on a real divergence."""
    d = first_divergence(backend, prompt_ids, reference, got)
    if d is None:
        return 0
    kind = "near-tie (excused)" if d.top2_gap < NEAR_TIE_LLAMACPP else "REAL DIVERGENCE"
    print(f"[parity] {label}: {kind} at position {d.index}: reference token {d.reference_token}, got "
          f"{d.got_token}, reference top-2 gap {d.top2_gap:.3g} (bound {NEAR_TIE_LLAMACPP})")
    assert d.top2_gap < NEAR_TIE_LLAMACPP, str(d)
    return 1


def test_plain_greedy_identical_to_llama_cpp_python(llama_model):
    import llama_cpp

    engine = Engine(llama_model)
    threads = torch.get_num_threads()  # prompt threads too: a spare spinning thread is slow on a loaded machine
    own = llama_cpp.Llama(str(EMBEDDED["smollm2-135m"].locate()), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    for text in PROMPTS:
        ids = engine.encode(text)
        want = []
        for tok in own.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
            if tok in llama_model.eos_token_ids or len(want) == 32:
                break
            want.append(tok)
        got = engine.complete(ids, max_new_tokens=32).token_ids
        got = [t for t in got if t not in llama_model.eos_token_ids]
        assert check_parity(llama_model.backend, ids, want, got, "llama-cpp-python vs clmkit llama.cpp") == 0


@pytest.mark.parametrize("name", ["lookup", "recycling", "adaptive"])
def test_training_free_drafters_greedy_identical(llama_model, name):
    engine = Engine(llama_model)
    drafter = make_drafter(name, llama_model)
    near_ties, accepted = 0, 0
    for text in PROMPTS:
        ids = engine.encode(text)
        plain = engine.complete(ids, max_new_tokens=40).token_ids
        fast = engine.complete(ids, max_new_tokens=40, drafter=drafter)
        near_ties += check_parity(llama_model.backend, ids, plain, fast.token_ids, name)
        accepted += fast.stats.accepted_tokens
    print(f"[parity] {name} on llama.cpp: {near_ties} near-tie(s) in {len(PROMPTS)} prompts")
    assert accepted > 0  # the drafts were really verified as trees, not all rejected


def test_tree_logits_equal_each_path_decoded_alone(llama_model):
    backend = llama_model.backend
    prefix = [1, 504, 3458, 314, 260, 2365]
    tree = TokenTree(torch.tensor([30, 31, 32, 33, 34, 35]), torch.tensor([-1, 0, 0, 1, 1, 2]))
    seq = backend.sequence(32)
    seq.prefill(prefix)
    logits = seq.tree(tree)
    seq.keep([0, 1, 4])  # root, 31, 35's sibling 34: drops the other leaves' cells
    after = seq.tree(TokenTree.root(77))
    seq.close()
    for node in range(len(tree)):
        path = [int(tree.tokens[i]) for i in tree.path_to(node)]
        assert torch.equal(logits[node], last_logits(backend, prefix + path)), node
    assert torch.allclose(after[0], last_logits(backend, prefix + [30, 31, 34, 77]), atol=1e-3)
    assert len(backend.free_ids) == backend.max_leaves  # every borrowed sequence id came back
    assert backend.near_tie == NEAR_TIE_LLAMACPP


def test_sampling_is_lossless_on_llamacpp(llama_model):
    """Tokens committed by tree verification on llama.cpp logits follow the plain next-token
    distribution (chi-square, 20,000 trials on one batched tree forward); a negative control that
    verifies against the wrong node's logits must fail."""
    backend, sampling = llama_model.backend, Sampling(temperature=1.0, top_k=6)
    context = Engine(llama_model).encode("Name a colour:")
    p1 = target_probs(last_logits(backend, context), sampling)
    top = torch.topk(p1, 3).indices.tolist()
    p2 = target_probs(last_logits(backend, context + [top[0]]), sampling)
    second = torch.topk(p2, 2).indices.tolist()
    # root -> top-3 first tokens (deterministic draw), the most likely one -> its top-2 continuations
    tree = TokenTree(torch.tensor([context[-1], *top, *second]), torch.tensor([-1, 0, 0, 0, 1, 1]))
    seq = backend.sequence(64)
    seq.prefill(context[:-1])
    probs = target_probs(seq.tree(tree), sampling)
    seq.close()
    # top-k leaves at most 6 tokens per node with mass: verify on those columns only (same arithmetic, fast)
    support = torch.cat([(probs > 0).any(0).nonzero().flatten(), tree.tokens]).unique()
    column = {int(t): i for i, t in enumerate(support)}
    small = TokenTree(torch.tensor([column[int(t)] for t in tree.tokens]), tree.parents)
    probs, shuffled = probs[:, support], probs[[1, 0, 2, 3, 4, 5]][:, support]  # control: root/child swapped
    g = torch.Generator().manual_seed(0)
    first, after, wrong = torch.zeros(len(p1)), torch.zeros(len(p1)), torch.zeros(len(p1))
    for _ in range(20_000):
        v = [int(support[t]) for t in verify_sampling(small, probs, g).tokens]
        first[v[0]] += 1
        if v[0] == top[0] and len(v) > 1:
            after[v[1]] += 1
        wrong[int(support[verify_sampling(small, shuffled, g).tokens[0]])] += 1
    assert first[p1 == 0].sum() == 0
    assert chisquare_pvalue(first[p1 > 0], p1[p1 > 0]) > ALPHA
    assert chisquare_pvalue(after[p2 > 0], p2[p2 > 0]) > ALPHA
    assert wrong[p1 == 0].sum() > 0 or chisquare_pvalue(wrong[p1 > 0], p1[p1 > 0]) < ALPHA


def test_batch_rows_identical_to_unbatched(llama_model):
    """10 rows: the batch context outgrows its first 8 rows on the way (rows re-prefilled there)."""
    engine = Engine(llama_model)
    texts = [PROMPTS[0], "Hi!", PROMPTS[1], *(f"Count from {i} to {i + 5}." for i in range(7))]
    budgets = [20, 8, 14, *[6] * 7]
    want = [engine.complete(t, max_new_tokens=n) for t, n in zip(texts, budgets)]
    dec = engine.batch_decoder()
    ids = [dec.add(t, max_new_tokens=n) for t, n in zip(texts, budgets)]
    assert dec.batch.slots == 16
    got = {i: [] for i in ids}
    while dec.active:
        for rid, chunk in dec.step():
            got[rid].extend(chunk.token_ids)
    for rid, w, t in zip(ids, want, texts):
        check_parity(llama_model.backend, engine.encode(t), w.token_ids, got[rid], "batch row")


def test_batch_row_logits_bitwise_equal_to_the_row_alone(llama_model):
    """A KV stream per row: every step's logits are exactly the row's own, also after the rows outgrow
    the batch context's cells (their KV states are copied into a larger context)."""
    backend, tok = llama_model.backend, llama_model.tokenizer
    prompts = [tok.encode(PROMPTS[0]), tok.encode("Hi!")]
    steps = 256 + 4 - min(map(len, prompts))  # every row crosses the first 256 cells
    batch = backend.batch(16)
    rows = [batch.add(p) for p in prompts]
    got = {row: [logits] for row, logits in rows}
    last = {row: int(logits.argmax()) for row, logits in rows}
    for _ in range(steps):
        for row, logits in batch.step(last).items():
            got[row].append(logits)
            last[row] = int(logits.argmax())
    assert batch.cells == 512
    for (row, _), p in zip(rows, prompts):
        seq = backend.sequence(len(p) + steps)
        alone = [seq.prefill(p)]
        for logits in got[row][:-1]:
            alone.append(seq.tree(TokenTree(torch.tensor([int(logits.argmax())]), torch.tensor([-1])))[0])
            seq.keep([0])
        seq.close()
        assert all(torch.equal(a, b) for a, b in zip(alone, got[row]))
        batch.drop(row)


def test_limits_and_torch_only_features_fail_clearly(llama_model):
    from clmkit.backends.llamacpp import LlamaCppBackend

    small = LlamaCppBackend(EMBEDDED["smollm2-135m"].locate(), n_ctx=256, n_seq_max=4)
    wide = TokenTree(torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([-1, 0, 0, 0, 0, 0]))
    assert len(tree_leaves(wide)) == 5
    seq = small.sequence(16)
    seq.prefill([1, 2, 3])
    with pytest.raises(InputError, match="n_seq_max"):
        seq.tree(wide)
    with pytest.raises(InputError, match="hidden states"):
        seq.prefill([4], hidden=True)
    with pytest.raises(InputError, match="torch weights"):
        make_drafter("draft", llama_model)  # the default self:N draft reuses the target's torch layers
    with pytest.raises(InputError, match="torch backend"):
        Engine(llama_model).forward


def test_torch_runs_on_one_thread_while_llamacpp_decodes(llama_model):
    """torch's OpenMP workers would spin between decodes and take the cores from llama.cpp's threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever the test run's setting, there is something to lower
    try:
        seq = llama_model.backend.sequence(16)
        seq.prefill([1, 2, 3])
        assert torch.get_num_threads() == 1
        batch = llama_model.backend.batch(16)
        row, _ = batch.add([4, 5])
        seq.close()
        assert torch.get_num_threads() == 1  # the batch row still decodes
        batch.drop(row)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

