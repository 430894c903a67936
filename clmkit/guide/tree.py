"""A guide over a draft tree: prune before the target forward, re-score every node after it.

`guide_tree` walks the tree depth-first with the guide (advance into a child, rollback on the way
back up), so each node gets the mask of its own path's state, and drops the children the mask
forbids - with their subtrees - before the target spends a forward on them.

Which forbidden children may be dropped depends on how they were drawn (see clmkit/verify.py):
- deterministic children are one-hot drafts: rejecting a token of target probability 0 leaves the
  residual unchanged, so dropping it changes nothing;
- sampled children (iid / without replacement) change the residual max(r - q, 0) even when rejected,
  so a forbidden one stays as a leaf (it can never be accepted: its target probability is 0) and
  only its subtree, whose grammar state does not exist, is dropped.

`guide_logits` applies the masks, then (for guides that re-score) walks the pruned tree again and
lets the guide re-score each node's logits from that node's state.
"""

from __future__ import annotations

import torch

from clmkit.errors import ClmkitError
from clmkit.guide import Guide
from clmkit.tree import Draw, TokenTree


def guide_tree(guide: Guide, tree: TokenTree) -> tuple[TokenTree, torch.Tensor | None]:
    """(pruned tree, allowed [n, vocab] bool per kept node or None when the guide never masks).
    The guide's state must be "the root token is the last one advanced"; it is left that way."""
    tokens = tree.tokens.tolist()
    keep_forbidden = tree.draw is not Draw.DETERMINISTIC
    masks: dict[int, torch.Tensor | None] = {}
    ends = guide.eos_ids

    def visit(node: int) -> None:
        mask = guide.allowed()
        if mask is not None and not bool(mask.any()):
            raise ClmkitError(f"the {guide.name} guide allows no next token here: its grammar cannot be "
                              "completed with this tokenizer")
        masks[node] = mask
        for child in tree.children[node]:
            allowed_here = mask is None or bool(mask[tokens[child]])
            if allowed_here and tokens[child] in ends:
                masks[child] = None  # the output ends here: nothing below an EOS is ever committed
            elif allowed_here:
                guide.advance([tokens[child]])
                visit(child)
                guide.rollback(1)
            elif keep_forbidden:
                masks[child] = None  # a never-accepted leaf; its logits are never read

    visit(0)
    keep = sorted(masks)
    pruned = tree if len(keep) == len(tree) else tree.subtree(keep)
    if all(masks[i] is None for i in keep):
        return pruned, None
    vocab = next(m for m in masks.values() if m is not None).numel()
    allowed = torch.stack([masks[i] if masks[i] is not None else torch.ones(vocab, dtype=torch.bool) for i in keep])
    return pruned, allowed


def guide_logits(guide: Guide, tree: TokenTree, allowed: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The logits decoding uses at every node of the (pruned) tree: re-scored by the guide, then masked."""
    if guide.reweights:
        logits = rescored(guide, tree, allowed, logits)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, : logits.shape[-1]], float("-inf"))
    return logits


def rescored(guide: Guide, tree: TokenTree, allowed: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Each node's raw logits re-scored by the guide from that node's state (a second depth-first walk)."""
    logits = logits.clone()
    tokens = tree.tokens.tolist()
    ends = guide.eos_ids

    def visit(node: int) -> None:
        logits[node] = guide.reweight(logits[node], node)
        for child in tree.children[node]:
            # forbidden leaves and EOS leaves have no state to score from
            if (allowed is None or bool(allowed[node, tokens[child]])) and tokens[child] not in ends:
                guide.advance([tokens[child]])
                visit(child)
                guide.rollback(1)

    visit(0)
    return logits


def first_logits(guide: Guide, logits: torch.Tensor) -> torch.Tensor:
    """The prefill's next-token logits (1-D) under the guide, from the state "nothing generated"."""
    mask = guide.allowed()
    if guide.reweights:
        logits = guide.reweight(logits, -1)  # -1: the prefill forward's last position
    if mask is not None:
        if not bool(mask.any()):
            raise ClmkitError(f"the {guide.name} guide allows no first token: its grammar cannot be "
                              "started with this tokenizer")
        logits = logits.masked_fill(~mask[: logits.shape[-1]], float("-inf"))
    return logits
