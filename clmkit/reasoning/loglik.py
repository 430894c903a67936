"""Log-likelihood scoring: lm-evaluation-harness's `loglikelihood` request, and the `direct-ll` strategy.

For a closed-form item (yes/no, multiple choice) nothing is generated: each answer's continuation
log-probability log p(continuation | context) is read off the logits, and the answer with the
highest one wins (lm-eval's `acc`); `acc_norm` divides each log-probability by the answer's length
in characters first (lm-eval's `acc_norm`, which normalises by `len(choice)` characters, not
tokens). The shared context is computed once:

    seq = backend.sequence(...)           torch or llama.cpp (clmkit/backends)
    seq.prefill(context[:-1])             -> KV cache                 (one causal forward)
    tree = trie of the continuations under the root context[-1]
    logits = seq.tree(tree)               -> every choice's tokens     (one tree forward)
    logprob(choice) = sum_j log_softmax(logits[parent(node_j)])[token_j]

The trie shares common first tokens between choices, so every distinct (prefix, token) pair is
computed exactly once. Tokenisation follows lm-eval's `_encode_pair`: context and continuation are
encoded together and split at the context's token count (trailing spaces of the context move to
the continuation), so merges across the boundary cannot change the context tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.backends import Backend
from clmkit.backends.torch import TorchSequence
from clmkit.errors import InputError
from clmkit.hf_adapter import Forward, new_cache
from clmkit.tree import TokenTree


@dataclass
class ChoiceScore:
    logprob: float  # sum over the continuation's tokens of log p(token | everything before it)
    is_greedy: bool  # every continuation token is the argmax at its position (lm-eval's second value)
    tokens: int  # continuation length in tokens


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (context ids, continuation ids) for raw-text scoring."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    context_ids = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return context_ids, whole[len(context_ids):]


def choice_trie(root: int, continuations: list[list[int]]) -> tuple[TokenTree, list[list[int]]]:
    """A TokenTree rooted at `root` holding every continuation as a path (shared prefixes merged),
    and, per continuation, the node index of each of its tokens."""
    tokens, parents = [root], [-1]
    child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    paths = []
    for continuation in continuations:
        node, path = 0, []
        for token in continuation:
            key = (node, int(token))
            if key not in child:
                child[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
            node = child[key]
            path.append(node)
        paths.append(path)
    return TokenTree(torch.tensor(tokens), torch.tensor(parents)), paths


@torch.inference_mode()
def score_continuations(runner: Forward | Backend, context: list[int], continuations: list[list[int]]) -> list[ChoiceScore]:
    """log p(continuation | context) for each continuation: the context once, all choices in one tree forward.

    `runner`: a backend (torch or llama.cpp: its `Sequence` does prefill + tree), or a bare HF `Forward`."""
    if not context:
        raise InputError("log-likelihood scoring needs a non-empty context")
    if any(not c for c in continuations):
        raise InputError("every continuation must have at least one token")
    tree, paths = choice_trie(context[-1], continuations)
    if isinstance(runner, Forward):
        seq = TorchSequence(runner, new_cache(runner.model, len(context) + len(tree)))
    else:  # on llama.cpp the tree takes one sequence id per leaf (a choice that is no other's prefix)
        seq = runner.sequence(len(context) + len(tree))
    try:
        if len(context) > 1:  # the root (context[-1]) is fed with the tree, as in decoding
            seq.prefill(context[:-1])
        logprobs = seq.tree(tree).float().log_softmax(-1)  # [nodes, vocab]; row i predicts i's children
    finally:
        seq.close()
    scores = []
    for continuation, path in zip(continuations, paths):
        targets = torch.tensor(continuation)
        rows = logprobs[tree.parents[torch.tensor(path)]]  # the logits that predict each token
        scores.append(ChoiceScore(float(rows.gather(1, targets[:, None]).sum()),
                                  bool((rows.argmax(-1) == targets).all()), len(continuation)))
    return scores


def pick(scores: list[float], choices: list[str], normalise: bool) -> int:
    """acc: argmax of the log-probabilities; acc_norm: of log-probability / len(choice) in characters."""
    values = [s / max(1, len(c)) for s, c in zip(scores, choices)] if normalise else list(scores)
    return max(range(len(values)), key=values.__getitem__)  # first index on a tie, like numpy.argmax


# ---- the strategy ------------------------------------------------------------------------------


def closed_form_choices(item) -> tuple[list[str], list] | None:
    """(answer strings to score, the prediction each stands for), or None for open-form items."""
    from clmkit.reasoning.strategies import choice_labels

    fmt = item.meta.get("answer_format", "yes/no")
    if fmt == "yes/no":
        return ["yes", "no"], ["yes", "no"]
    if fmt == "choice" and item.choices:
        labels = choice_labels(item)
        return labels, list(range(len(labels)))
    return None


def direct_ll(model, item):
    """The `direct` prompt, answered by log-likelihood instead of generation (yes/no and choice items).

    Open-form items (CaLM's probabilities and free text) have no choices to score: they are
    answered by `direct` generation, and the trace says so."""
    from clmkit.reasoning.strategies import Attempt, answer_hint, direct, question_text

    found = closed_form_choices(item)
    if found is None:
        attempt = direct(model, item)
        attempt.steps.insert(0, {"scoring": "generate", "why": "open-form answer: no choices to score"})
        return attempt
    if not hasattr(model, "loglikelihood"):
        raise InputError(f"direct-ll needs log-probabilities; {getattr(model, 'name', 'this model')} "
                         "does not give them (use a clmkit model)")
    choices, answers = found
    prompt = f"{question_text(item)}\n{answer_hint(item)}\nAnswer:"
    scores = model.loglikelihood(prompt, choices)
    logprobs = [s.logprob for s in scores]
    attempt = Attempt("", prediction=answers[pick(logprobs, choices, False)],
                      prediction_norm=answers[pick(logprobs, choices, True)])
    attempt.steps.append({"prompt": prompt, "scoring": "loglikelihood",
                          "logprobs": dict(zip(choices, logprobs)),
                          "is_greedy": dict(zip(choices, (s.is_greedy for s in scores)))})
    attempt.output = choices[answers.index(attempt.prediction)]
    return attempt


def model_loglikelihood(engine, prompt: str, choices: list[str], chat: bool | None) -> list[ChoiceScore]:
    """Score answer strings after a prompt, the way `ClmkitModel.complete` would have been asked it.

    Raw prompts: lm-eval's convention, continuation " " + choice after the prompt ("Answer: yes").
    Chat prompts: the context is the chat-templated prompt up to the assistant's turn, and the
    continuation is the choice as the first word of the reply, capitalised ("Yes", "A", "0")."""
    use_chat = engine.model.chat if chat is None else chat
    tokenizer = engine.model.tokenizer
    if use_chat:
        context = engine.encode(prompt, chat=True)
        continuations = [list(tokenizer(c[:1].upper() + c[1:], add_special_tokens=False)["input_ids"])
                         for c in choices]
    else:
        pairs = [encode_pair(tokenizer, prompt, " " + c) for c in choices]
        context = pairs[0][0]
        continuations = [p[1] for p in pairs]
    longest = len(context) + max(map(len, continuations))
    if longest > engine.model.context_length:
        raise InputError(f"prompt + answer is {longest} tokens but {engine.model.name} has a context of "
                         f"{engine.model.context_length} tokens")
    return score_continuations(engine.backend, context, continuations)
