"""`clm eval causal --backend`: log-likelihood scoring and batched generation on the llama.cpp backend,
the backend recorded per row, and the errors of a wrong choice."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from clmkit.errors import InputError
from clmkit.reasoning.cli import register
from clmkit.reasoning.evaluate import run
from clmkit.reasoning.lm import FakeModel, make_model
from clmkit.tasks.base import TaskItem

app = typer.Typer()
register(app)
app.command("other")(lambda: None)
runner = CliRunner()


def test_unknown_backend_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["causal", "--task", "axiomatic", "--model", "fake:yes", "--backend", "jax",
                                 "-o", str(tmp_path)])
    assert result.exit_code == 2 and "unknown backend 'jax'" in result.output and "Traceback" not in result.output


def test_llamacpp_backend_on_an_endpoint_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["causal", "--task", "axiomatic", "--model", "fake:yes", "--backend", "llama.cpp",
                                 "-o", str(tmp_path)])
    assert result.exit_code == 2 and "only for clmkit models" in result.output
    with pytest.raises(InputError, match="only for clmkit models"):
        make_model("openai:gpt-x", base_url="http://localhost:1", backend="llama.cpp")


def test_backend_is_recorded_and_a_file_keeps_one_backend(tmp_path):
    """Kernels round differently: resuming a torch file on llama.cpp would mix two models' answers."""
    item = TaskItem("a", "Is it?", "yes", None, {"answer_format": "yes/no"})
    model = FakeModel(["yes"])
    model.backend = "torch"
    [record] = run([item], model, "direct", tmp_path / "p.jsonl")
    assert record["backend"] == "torch"
    model.backend = "llama.cpp"
    with pytest.raises(InputError, match="made on the torch backend, not llama.cpp"):
        run([item], model, "direct", tmp_path / "p.jsonl")
    assert run([item], model, "direct", tmp_path / "p.jsonl", resume=False)[0]["backend"] == "llama.cpp"


# ---- the real model on llama.cpp (the tiny models are torch-only: the llama.cpp tests use the shipped GGUF) ----

ITEMS = [TaskItem(f"q{k}", q, a, None, {"answer_format": "yes/no", "task": "toy"}) for k, (q, a) in enumerate([
    ("Is the sky blue?", "yes"), ("Does rain cause wet streets?", "yes"), ("Is fire cold?", "no")])]


@pytest.fixture(scope="module")
def llama_lm():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup installs it)")
    from clmkit.reasoning.lm import ClmkitModel

    return ClmkitModel("smollm2-135m", backend="llama.cpp")


@pytest.mark.embedded
def test_llamacpp_tree_scores_equal_one_chain_per_choice(llama_lm):
    """direct-ll on llama.cpp: all choices in one tree forward = each choice decoded as its own chain
    (llama.cpp's tree attention is exact; the shared trie only removes repeated work)."""
    from clmkit.reasoning.loglik import encode_pair, model_loglikelihood, score_continuations

    engine = llama_lm.engine
    prompt = "Does smoking cause lung cancer? Answer with yes or no.\nAnswer:"
    choices = ["yes", "no", "maybe not", "maybe so"]  # " maybe ..." share a first token: a real trie
    together = model_loglikelihood(engine, prompt, choices, chat=False)  # raw: lm-eval's " yes" continuations
    for choice, score in zip(choices, together):
        context, continuation = encode_pair(engine.model.tokenizer, prompt, " " + choice)
        [alone] = score_continuations(engine.backend, context, [continuation])
        assert score.logprob == pytest.approx(alone.logprob, abs=1e-3) and score.tokens == alone.tokens
    assert engine.backend.free_ids and len(engine.backend.free_ids) == engine.backend.max_leaves  # ids given back


@pytest.mark.embedded
def test_llamacpp_batched_strategy_run_equals_serial(llama_lm, tmp_path):
    """-b on llama.cpp (one KV stream per row): exactly the records of the serial run. (With the
    unified cache the rows attended over each other's masked cells and a 3-row step once rounded a
    near-tie the other way: "No" vs "No.".)"""
    from clmkit.reasoning.evaluate import batched

    serial = {r["id"]: r for r in run(ITEMS, llama_lm, "direct", tmp_path / "serial.jsonl")}
    together = run(ITEMS, llama_lm, "direct", tmp_path / "batched.jsonl", executor=batched(llama_lm, "direct", 3))
    assert {r["id"] for r in together} == set(serial) and {r["backend"] for r in together} == {"llama.cpp"}
    assert {r["id"]: r["output"] for r in together} == {i: r["output"] for i, r in serial.items()}


# llama.cpp runs the GGUF's Q4_1 weights with activations quantized to 8 bits; torch runs the same weights
# dequantized to fp32: not the same numbers. Measured on 26 benchmark direct prompts (docs/reasoning.md):
# next-token logits differ by up to 0.98 (mostly a common offset), greedy outputs diverged on 5 of 26, each
# where torch's top-2 gap was 0.09-0.32, and answer log-probabilities differed by at most 0.26.
NEAR_TIE_TORCH_VS_LLAMACPP = 1.0
LOGPROB_TOLERANCE = 0.5


@pytest.mark.embedded
def test_llamacpp_answers_equal_torch_up_to_near_ties(llama_lm, embedded_model):
    """The same direct prompts greedily on both backends: identical text, or a first differing token
    where torch's top-2 logit gap is below the stated bound; direct-ll log-probabilities within the
    tolerance."""
    from clmkit import Engine
    from clmkit.parity import first_divergence
    from clmkit.reasoning.loglik import model_loglikelihood
    from clmkit.reasoning.strategies import answer_hint, question_text

    torch_engine = Engine(embedded_model)
    for item in ITEMS[:2]:
        prompt = f"{question_text(item)}\n{answer_hint(item)}\nAnswer:"
        want = torch_engine.complete(prompt, max_new_tokens=4, temperature=0.0)
        got = llama_lm.engine.complete(prompt, max_new_tokens=4, temperature=0.0)
        d = first_divergence(embedded_model.module, torch_engine.encode(prompt), want.token_ids, got.token_ids)
        if d is not None:
            print(f"[parity] {item.id}: torch {want.text!r} vs llama.cpp {got.text!r}: first differing token {d.index}, "
                  f"torch top-2 gap {d.top2_gap:.3g} (bound {NEAR_TIE_TORCH_VS_LLAMACPP})")
            assert d.top2_gap < NEAR_TIE_TORCH_VS_LLAMACPP, str(d)
        scores = {name: [s.logprob for s in model_loglikelihood(engine, prompt, ["yes", "no"], chat=None)]
                  for name, engine in (("torch", torch_engine), ("llama.cpp", llama_lm.engine))}
        # within the tolerance, direct-ll's pick can flip only where torch's margin is below 2 * tolerance
        assert max(abs(a - b) for a, b in zip(scores["torch"], scores["llama.cpp"])) < LOGPROB_TOLERANCE, scores
