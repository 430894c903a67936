"""The axiomatic-training experiment: its demonstrations are right, the answer loss sees only the answers, the
one-token name pool, smoke run."""

from __future__ import annotations

import random

import math

import networkx as nx
import pytest
import torch

from clmkit.lab.corpora import default_tokenizer
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.axiomatic import (PROMPT_WORDS, answer_batch, demonstration, demonstration_batch,
                                              one_token_names, yes_no_accuracy)
from clmkit.lab.objectives import IGNORE
from clmkit.tasks import axiomatic


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
        start, want = 1 + len(tok.encode(" " + prompt)), tok.encode(" " + answer)  # BOS + " " + prompt
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
    assert text == "<|endoftext|> " + prompt  # the first answer follows the prompt exactly as at test time
    whole = demonstration_batch(tok, [(prompt, answer, more)])  # the demonstration loss: every next token
    assert (whole.targets == batch.targets)[batch.targets != IGNORE].all() and (whole.targets != IGNORE).all()


def test_one_token_names():
    tok = default_tokenizer()
    pool = one_token_names(tok)
    assert len(pool) > 100 and not {n.lower() for n in pool} & PROMPT_WORDS
    assert all(len(tok.encode(" " + n)) == 1 and n.isalnum() and 1 <= len(n) <= 3 for n in pool)
    # the first name of a prompt is the same token as its later mentions (BOS + leading space)
    rng = random.Random(2)
    prompt, answer = demonstration(rng, pool=pool)
    row = answer_batch(tok, [(prompt, answer)]).input_ids[0].tolist()
    first = prompt.split(" causes ")[0]
    assert [row[1]] == tok.encode(" " + first)
    items = axiomatic.generate(10, seed=4, settings=("long_chain",), name_pool=pool)
    assert all(n in pool for it in items for n in it.prompt.replace(".", "").replace("?", "").split()
               if n not in ("causes", "Does", "cause"))
    with pytest.raises(ValueError, match="cannot name"):  # a 7-15 node chain needs at least 7 names
        axiomatic.generate(1, settings=("long_chain",), name_pool=pool[:3])


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
    record = run_experiment("axiomatic", Context(scale=0.002, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease: {losses}"
    assert [r["variant"] for r in record["rows"]] == ["none positions", "rope positions", "learned positions"]
    assert all(0 <= r["long_chain"] <= 1 for r in record["rows"])
