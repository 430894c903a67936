"""The reversal curse, and two fixes: BICO and SPT.

Papers: *Are We Falling in a Middle-Intelligence Trap? An Analysis and Mitigation of the Reversal Curse*
(Lv et al., 2023: BICO) and *Mitigating Reversal Curse in Large Language Models via Semantic-aware
Permutation Training* (Guo et al., 2024: SPT).

A model trained with next-token prediction on "C's parent is P." answers "C's parent is" -> P but not
"P's child is" -> C: the reversal curse. The facts are split in two halves:
  D1  seen only forwards ("C's parent is P.")              -> the reverse question on D1 is the test
  D2  seen both ways ("C's parent is P." and "P's child is C.")  -> teaches what "child" means
Variants, same GPT, same steps:
  next-token  plain causal LM on the sentences
  BICO        bidirectional attention over a corrupted sentence (an entity replaced by a sentinel) and
              the masked entity decoded after it (autoregressive blank infilling, GLM-style, which is
              BICO's mask-denoising objective with causal attention turned bidirectional)
  SPT         each sentence cut into semantic chunks (entity, relation, entity, end) and trained in its
              original, reversed or a random chunk order, an order marker in front (SPT's prompt)
Measured: forward and reverse accuracy on D1 as a multiple choice over every D1 name by
log-likelihood (chance = 1/|D1|), and the reverse accuracy on D2 (seen) as a sanity check.
Simplified: the papers fine-tune pretrained 7B models; here every variant trains from scratch on the
facts, the chunks come from the sentence template instead of an assistant LLM's segmentation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from clmkit.lab.corpora import default_tokenizer, reversal_facts
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, answer_loss, fit, gpt_config, grouped_bars, save, score, subplots
from clmkit.lab.model import GPT
from clmkit.lab.objectives import py_rng, shifted
from clmkit.lab.tokenizer import LabTokenizer


@dataclass
class Config:
    n_facts: int = 400  # half forward-only (D1, the test), half both ways (D2)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    block_size: int = 48


ORDERS = ("original", "reversed", "permuted")
VARIANTS = ("next-token", "BICO", "SPT")


def order_marker(tok: LabTokenizer, order: str) -> int:
    """SPT's order prompt: the last three sentinels (the objectives use the first ones)."""
    return tok.sentinels[-3 + ORDERS.index(order)]


def chunks(fact: dict, backward: bool) -> list[str]:
    """The semantic units of one sentence: entity, relation, entity, end."""
    if backward:
        return [fact["parent"], "'s child is", " " + fact["child"], "."]
    return [fact["child"], "'s parent is", " " + fact["parent"], "."]


def spt_sequence(tok: LabTokenizer, units: list[str], order: str, rng: random.Random) -> list[int]:
    """One SPT training row: marker + the chunks in `order` (token ids of each chunk kept intact)."""
    pieces = [tok.encode(u) for u in units]
    if order == "reversed":
        pieces = pieces[::-1]
    elif order == "permuted":
        rng.shuffle(pieces)
    return [order_marker(tok, order)] + [t for p in pieces for t in p] + [tok.eos]


def bico_layout(tok: LabTokenizer, units: list[str], masked: int) -> tuple[list[int], int]:
    """(row, prefix length): the sentence with chunk `masked` replaced by <s0> (read bidirectionally),
    then <s0> + the chunk + <eom> decoded left to right."""
    pieces = [tok.encode(u) for u in units]
    part_a = [t for i, p in enumerate(pieces) for t in ([tok.sentinels[0]] if i == masked else p)]
    return part_a + [tok.sentinels[0]] + pieces[masked] + [tok.eom], len(part_a)


def training_units(facts: list[dict]) -> list[list[str]]:
    half = len(facts) // 2
    rows = [chunks(f, backward=False) for f in facts]
    rows += [chunks(f, backward=True) for f in facts[half:]]
    return rows


def make_batches(variant: str, tok: LabTokenizer, units: list[list[str]], batch_size: int):
    plain = [tok.encode("".join(u)) + [tok.eos] for u in units]

    def make_batch(step, g):
        rng = py_rng(g)
        picks = [rng.randrange(len(units)) for _ in range(batch_size)]
        if variant == "next-token":
            return shifted([plain[i] for i in picks], tok)
        if variant == "SPT":
            return shifted([spt_sequence(tok, units[i], rng.choice(ORDERS), rng) for i in picks], tok)
        rows, prefixes = zip(*(bico_layout(tok, units[i], rng.choice((0, 2))) for i in picks))  # mask an entity
        batch = shifted(list(rows), tok, loss_from=[p + 1 for p in prefixes])
        batch.prefix_len = torch.tensor(prefixes)
        return batch

    return make_batch


def choice_accuracy(model: GPT, tok: LabTokenizer, variant: str, queries: list[list[str]], answer_at: int,
                    device: str, chunk: int = 2048) -> float:
    """Multiple choice over every query's own answer chunk: the fraction whose true answer scores highest.
    `queries`: unit lists; `answer_at`: the index of the answer unit (2: the object entity)."""
    answers = [q[answer_at] for q in queries]
    rows, prefixes, starts = [], [], []
    for q in queries:
        for a in answers:
            units = q[:answer_at] + [a] + q[answer_at + 1:]
            if variant == "BICO":
                row, prefix = bico_layout(tok, units, answer_at)
                rows.append(row)
                prefixes.append(prefix)
                starts.append(prefix + 1)
            else:
                head = tok.encode("".join(units[:answer_at]))
                marker = [order_marker(tok, "original")] if variant == "SPT" else []
                rows.append(marker + head + tok.encode("".join(units[answer_at:])))
                starts.append(len(marker) + len(head))
    scores = []
    for i in range(0, len(rows), chunk):
        batch = shifted(rows[i:i + chunk], tok, loss_from=starts[i:i + chunk])
        if variant == "BICO":
            batch.prefix_len = torch.tensor(prefixes[i:i + chunk])
        scores.append(score(model, batch, device)[0])
    table = torch.cat(scores).view(len(queries), len(answers))
    return (table.argmax(1) == torch.arange(len(queries))).float().mean().item()


@register("reversal", paper="Middle-Intelligence Trap (BICO, Lv et al., 2023) and Semantic-aware Permutation Training (SPT, Guo et al., 2024)",
          claim="next-token training shows the reversal curse; BICO and SPT recover reverse-question accuracy")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx, block_size=cfg.block_size, batch_size=cfg.batch_size)
    tok = default_tokenizer()
    facts = reversal_facts(ctx.count(cfg.n_facts, 16), seed=ctx.seed)
    half = len(facts) // 2
    d1, d2 = facts[:half], facts[half:]
    units = training_units(facts)
    steps = ctx.steps(cfg.steps)
    rows, curves = [], {}
    for variant in VARIANTS:
        torch.manual_seed(ctx.seed)
        attention = "prefix" if variant == "BICO" else "causal"
        model = GPT(gpt_config(tok, size, attention=attention))
        curves[variant] = fit(ctx, variant, model, make_batches(variant, tok, units, size.batch_size), steps,
                              lr=cfg.lr, batch_size=size.batch_size, loss_fn=answer_loss)
        model.eval()
        rows.append({
            "variant": variant,
            "D1 forward acc": round(choice_accuracy(model, tok, variant, [chunks(f, False) for f in d1], 2, ctx.device), 4),
            "D1 reverse acc": round(choice_accuracy(model, tok, variant, [chunks(f, True) for f in d1], 2, ctx.device), 4),
            "D2 reverse acc (seen)": round(choice_accuracy(model, tok, variant, [chunks(f, True) for f in d2], 2, ctx.device), 4),
            "chance": round(1 / len(d1), 4),
        })

    def figure(path):
        fig, ax = subplots(figsize=(6.5, 3.6))
        grouped_bars(ax, rows, ["D1 forward acc", "D1 reverse acc", "D2 reverse acc (seen)"])
        ax.axhline(1 / len(d1), color="grey", lw=0.8, ls="--", label="chance")
        ax.set_ylabel("multiple-choice accuracy")
        ax.set_title(f"reversal curse: {len(d1)} test facts, {steps} steps")
        ax.legend(fontsize=8)
        save(fig, path)

    notes = [f"{len(facts)} fictional parent facts: D1 = {len(d1)} seen only forwards (the test), D2 = {len(d2)} seen both ways; "
             f"GPT {size.n_layer}x{size.n_embd} from scratch, {steps} steps x {size.batch_size} sentences; "
             f"accuracy = multiple choice over all {len(d1)} D1 names by log-likelihood"]
    return Result(rows, curves, {"facts": len(facts)}, figure, notes)
