"""The axiomatic-training experiment: its demonstrations are right, the loss sees only the answer, smoke run."""

from __future__ import annotations

import random

import math

import networkx as nx
import torch

from clmkit.lab.corpora import default_tokenizer
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.axiomatic import answer_batch, demonstration, yes_no_accuracy
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


def test_follow_up_questions_are_correct_and_carry_the_only_other_losses():
    tok = default_tokenizer()
    rng = random.Random(1)
    for _ in range(30):
        prompt, answer, more = demonstration(rng, follow_ups=3)
        edges = [tuple(s.split(" causes ")) for s in prompt.split(" Does ")[0].rstrip(".").split(". ")]
        for question, reply in more:
            x, y = question.removeprefix("Does ").rstrip("?").split(" cause ")
            assert nx.has_path(nx.DiGraph(edges), x, y) == (reply == "yes")
    batch = answer_batch(tok, [(prompt, answer, more)])
    kept = (batch.targets[0] != IGNORE).nonzero().flatten().tolist()
    want = [t for a in [answer] + [r for _, r in more] for t in tok.encode(" " + a)]
    assert batch.targets[0, kept].tolist() == want
    text = tok.decode(batch.input_ids[0, : kept[0] + 1].tolist())
    assert text == prompt  # the first answer follows the prompt exactly as at test time


class Bigram(torch.nn.Module):
    """p(next | current token) from a table: enough to pin what the yes/no scorer compares."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def hidden(self, idx, **_):
        return idx

    def logits(self, h):
        return self.table[h]


def test_yes_no_scores_the_whole_multi_token_answer():
    tok = default_tokenizer()
    prompt = "a causes b. Does b cause a?"
    y, es = tok.encode(" yes")  # two BPE tokens; " no" is one
    (no,) = tok.encode(" no")
    table = torch.full((tok.vocab_size, tok.vocab_size), -30.0)
    table[tok.encode(prompt)[-1], y], table[tok.encode(prompt)[-1], no] = math.log(0.6), math.log(0.4)
    table[y, es], table[y, no] = math.log(0.5), math.log(0.5)  # rows are normalised by the scorer's softmax
    # first token alone prefers " yes" (0.6 > 0.4); the whole answer prefers " no" (0.6 * 0.5 < 0.4)
    assert yes_no_accuracy(Bigram(table), tok, [(prompt, "no")], "cpu") == 1.0
    table[y, es], table[y, no] = math.log(0.9), math.log(0.1)  # now 0.54 > 0.4
    assert yes_no_accuracy(Bigram(table), tok, [(prompt, "no")], "cpu") == 0.0


def test_smoke_run(tmp_path):
    record = run_experiment("axiomatic", Context(scale=0.015, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease: {losses}"
    assert [r["variant"] for r in record["rows"]] == ["none positions", "rope positions", "learned positions"]
    assert all(0 <= r["long_chain"] <= 1 for r in record["rows"])
