"""The axiomatic-training experiment: its demonstrations are right, the loss sees only the answer, smoke run."""

from __future__ import annotations

import random

import networkx as nx

from clmkit.lab.corpora import default_tokenizer
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.axiomatic import answer_batch, demonstration
from clmkit.lab.objectives import IGNORE


def test_demonstrations_are_correct_and_balanced():
    rng = random.Random(0)
    answers = []
    for _ in range(200):
        prompt, answer = demonstration(rng)
        premise, question = prompt.split(" Does ")
        edges = [tuple(s.split(" causes ")) for s in premise.rstrip(".").split(". ")]
        x, y = question.rstrip("?").split(" cause ")
        assert 2 <= len(edges) <= 5
        assert nx.has_path(nx.DiGraph(edges), x, y) == (answer == "yes")
        answers.append(answer)
    assert 70 < answers.count("yes") < 130


def test_loss_only_on_the_answer_token():
    tok = default_tokenizer()
    items = [demonstration(random.Random(i)) for i in range(4)]
    batch = answer_batch(tok, items)
    for i, (prompt, answer) in enumerate(items):
        start, want = len(tok.encode(prompt)), tok.encode(" " + answer)
        kept = (batch.targets[i] != IGNORE).nonzero().flatten().tolist()
        assert kept == list(range(start - 1, start - 1 + len(want))) and batch.targets[i, kept].tolist() == want


def test_smoke_run(tmp_path):
    record = run_experiment("axiomatic", Context(scale=0.015, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease: {losses}"
    assert [r["variant"] for r in record["rows"]] == ["none positions", "rope positions", "learned positions"]
    assert all(0 <= r["long_chain"] <= 1 for r in record["rows"])
