"""JRT-RNN: *Just read twice: closing the recall gap for recurrent language models* (Arora et al., 2024).

A recurrent LM (here: linear attention, whose state is a fixed d x d matrix) must decide what to keep
of the context while reading it once, left to right, before it knows the question: on associative
recall ("k1 v1 k2 v2 ... ? kq" -> vq) it falls behind softmax attention as the number of pairs
grows. The paper's two fixes:
  JRT-Prompt  repeat the context (and question) in the prompt, so the second read knows what matters
  JRT-RNN     prefix linear attention: the prompt is read non-causally (every prompt position sees the
              whole prompt's state), the answer decoded causally from there
Variants (same GPT, a short convolution before every token mixer, linear attention in every layer
unless noted, same steps):
  linear attn           causal linear attention, plain prompt
  linear attn + JRT-Prompt  the same model, the context repeated twice at train and test time
  JRT-RNN               prefix (non-causal) linear attention over the prompt, causal after it
  softmax attn          the transformer reference
Measured: recall accuracy (the value token is the argmax) by number of key-value pairs, trained on
a mixture of lengths. The task is laid out as Zoology's MQAR: single-token keys, each value token right
after its key, training rows adding FOLLOW_UP more supervised queries after the tested one.
Simplified: linear attention with the elu+1 feature map is computed in its (mathematically equal)
quadratic masked form rather than as a recurrence, and the paper's separate encoder/decoder
projections and its sliding-window attention are left out (the short convolution is kept, causal
everywhere); models have 0.4M (--size small) to 1.3M parameters instead of 360M-1.3B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from clmkit.lab.corpora import default_tokenizer, kv_recall
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, answer_loss, fit, gpt_config, save, score, subplots
from clmkit.lab.model import GPT
from clmkit.lab.objectives import IGNORE, Batch, pad_stack, py_rng

PAIRS_TRAIN = (4, 8, 16, 24)
PAIRS_TEST = (4, 8, 16, 24, 32)
VARIANTS = ("softmax attn", "linear attn", "linear attn + JRT-Prompt", "JRT-RNN")  # the reference first: it must learn the task
FOLLOW_UP = 16  # training rows: extra queries after the tested one (the test asks one question)


@dataclass
class Config:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3  # within Zoology's MQAR sweep (1e-4..1e-2); the setting the probes in docs/lab.md learned with
    conv: int = 3     # short-convolution width (Based / JRT-RNN); 0: none
    test_items: int = 200  # per number of pairs


class LinearAttention(nn.Module):
    """Linear attention, out_t = sum_s M[t,s] phi(q_t).phi(k_s) v_s / sum_s M[t,s] phi(q_t).phi(k_s),
    phi = elu + 1. Under a causal mask M this is a recurrent LM (state sum_s phi(k_s) v_s^T); under
    the prefix mask the prompt reads the whole prompt's state: prefix linear attention (JRT-RNN)."""

    def __init__(self, c):
        super().__init__()
        self.n_head = c.n_head
        self.q = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.kv = nn.Linear(c.n_embd, 2 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)

    def forward(self, x, mask, rope=None, memory=None):
        B, T, C = x.shape
        q = F.elu(self.q(x).view(B, T, self.n_head, -1).transpose(1, 2)) + 1
        k, v = self.kv(x).view(B, T, 2, self.n_head, -1).permute(2, 0, 3, 1, 4)
        k = F.elu(k) + 1
        scores = (q @ k.transpose(-1, -2)) * mask  # (B, H, T, T), no softmax: linear in the state
        y = (scores @ v) / scores.sum(-1, keepdim=True).clamp(min=1e-6)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class ShortConv(nn.Module):
    """A causal depthwise convolution over the last `width` positions, added to the token mixer's input
    (Based and JRT-RNN put one before their linear attention; Zoology's MQAR models too). Why: recall
    needs each value position to know its key (the previous token); attention alone must first learn a
    previous-token head, and in this lab's probes (4-8 pairs, one seed) a 2 x 64 softmax GPT sat on the
    "some value from the context" plateau (recall ~0.3) for 1,000+ steps without it, and reached 1.0 in
    ~200 steps with it. It shortens the plateau, it does not remove it: see docs/lab.md for a seed that
    stayed on it for 2,000 steps of the full mixture."""

    def __init__(self, mixer: nn.Module, n_embd: int, width: int):
        super().__init__()
        self.mixer, self.width = mixer, width
        self.conv = nn.Conv1d(n_embd, n_embd, width, groups=n_embd, bias=False)  # PyTorch's default init

    def forward(self, x, mask, rope=None, memory=None):
        shifted = self.conv(F.pad(x.transpose(1, 2), (self.width - 1, 0))).transpose(1, 2)  # left pad: causal
        return self.mixer(x + shifted, mask, rope, memory)


def build(tok, size: Size, variant: str, conv: int = Config.conv) -> GPT:
    model = GPT(gpt_config(tok, size, attention="prefix" if variant == "JRT-RNN" else "causal"))
    for block in model.blocks:
        mixer = block.attn if variant == "softmax attn" else LinearAttention(model.config)
        block.attn = ShortConv(mixer, model.config.n_embd, conv) if conv else mixer
    return model


def single_token_keys(tok) -> list[str]:
    """The two-letter keys that are one BPE token after a space. Why: a key split into pieces that
    vary from key to key ("fd" vs "x" "i") must be re-assembled before it can be matched: one more
    thing for a small model to learn before recall itself; the paper's MQAR keys are single tokens too."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [a + b for a in letters for b in letters if len(tok.encode(f" {a}{b}")) == 1]


def single_token_values(tok) -> list[str]:
    """The numbers 0-99 that are one BPE token after a space (the lab BPE has " 0".." 8", not " 9"):
    a value is then one token, right after its key, and is scored as one argmax."""
    return [str(n) for n in range(100) if len(tok.encode(f" {n}")) == 1]


def layout(tok, item: dict, repeat: bool) -> tuple[list[int], int, list[int]]:
    """(row, prompt length, positions of answer tokens): prompt tokens (the context twice for
    JRT-Prompt), the answer, then the training-only follow-up queries `item["more"]` (" k v" each).
    Every key and value carries its leading space, the first one too (" ab", not "ab"): a key is then
    one token that reads the same in the context and in the question."""
    context, question = item["prompt"].split(" ? ")
    prompt = f"{context} {context} ? {question}" if repeat else item["prompt"]
    ids = tok.encode(" " + prompt)
    row = ids + tok.encode(" " + item["answer"])
    answers = list(range(len(ids), len(row)))
    for key, value in item.get("more", ()):
        row += tok.encode(f" {key}")
        reply = tok.encode(f" {value}")
        answers += range(len(row), len(row) + len(reply))
        row += reply
    return row, len(ids), answers


def recall_batch(tok, items: list[dict], variant: str) -> Batch:
    rows, prompts, answers = zip(*(layout(tok, it, variant.endswith("JRT-Prompt")) for it in items))
    inputs = pad_stack([r[:-1] for r in rows], tok.pad)
    targets = torch.full_like(inputs, IGNORE)
    for i, (row, at) in enumerate(zip(rows, answers)):
        targets[i, [a - 1 for a in at]] = torch.tensor([row[a] for a in at])  # the answers' tokens only
    pad = pad_stack([[0] * (len(r) - 1) for r in rows], 1).bool()
    prefix = torch.tensor(prompts) if variant == "JRT-RNN" else None
    return Batch(inputs, targets, prefix_len=prefix, pad=pad)


def recall_accuracy(model, tok, items: list[dict], variant: str, device: str, chunk: int = 50) -> float:
    """The fraction of items whose every answer token is the argmax."""
    correct = 0
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        _, n, hits = score(model, recall_batch(tok, part, variant), device)
        correct += int((hits == n).sum())
    return correct / len(items)


class Batches:
    """Training items: a fresh kv-recall item per row, the number of pairs drawn from PAIRS_TRAIN, and
    up to FOLLOW_UP more queries of the other keys of the same context after the answer (MQAR: more
    supervised answers per row; the tested key is not asked again, its answer would be a plain copy)."""

    def __init__(self, tok, variant: str, batch_size: int):
        self.tok, self.variant, self.batch_size = tok, variant, batch_size
        self.keys, self.values = single_token_keys(tok), single_token_values(tok)

    def __call__(self, step, g):
        rng = py_rng(g)
        items = [kv_recall(1, rng.choice(PAIRS_TRAIN), seed=rng.randrange(2**31), keys=self.keys,
                           values=self.values)[0]
                 for _ in range(self.batch_size)]
        for item in items:
            others = [p for p in item["pairs"] if p[0] != item["query"]]
            item["more"] = rng.sample(others, min(FOLLOW_UP, len(others)))
        return recall_batch(self.tok, items, self.variant)


@register("jrt-rnn", paper="Just read twice: closing the recall gap for recurrent language models (Arora et al., 2024)",
          claim="prefix linear attention (JRT-RNN) and repeating the context (JRT-Prompt) close the recall gap of recurrent LMs")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx, batch_size=cfg.batch_size)
    # a repeated 32-pair context (2 tokens a pair), the question, the follow-ups; rows are padded to their own length
    size.block_size = 2 * 2 * max(PAIRS_TEST) + 2 * FOLLOW_UP + 16
    tok = default_tokenizer()
    steps = ctx.steps(cfg.steps)
    n_test = ctx.count(cfg.test_items, 8)
    keys, values = single_token_keys(tok), single_token_values(tok)
    tests = {n: kv_recall(n_test, n, seed=10_000 + n, keys=keys, values=values) for n in PAIRS_TEST}
    rows, curves = [], {}
    for variant in VARIANTS:
        torch.manual_seed(ctx.seed)
        model = build(tok, size, variant, cfg.conv)
        held_out = tests[PAIRS_TRAIN[1]][: max(8, n_test // 4)]
        curves[variant] = fit(ctx, variant, model, Batches(tok, variant, size.batch_size), steps,
                              lambda: 1 - recall_accuracy(model, tok, held_out, variant, ctx.device), cfg.lr, size.batch_size,
                              loss_fn=answer_loss)
        model.eval()
        rows.append({"variant": variant, **{f"{n} pairs": round(recall_accuracy(model, tok, items, variant, ctx.device), 4)
                                            for n, items in tests.items()}})

    def figure(path):
        fig, ax = subplots(figsize=(6.5, 3.6))
        for r in rows:
            ax.plot(PAIRS_TEST, [r[f"{n} pairs"] for n in PAIRS_TEST], marker="o", label=r["variant"])
        ax.axvline(max(PAIRS_TRAIN), color="grey", lw=0.8, ls=":")
        ax.set_xlabel("key-value pairs in the context (dotted: longest trained)")
        ax.set_ylabel("recall accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        save(fig, path)

    notes = [f"key-value recall, MQAR layout (single-token 2-letter keys, each followed by its "
             f"single-token number value, {len(values)} values), "
             f"short convolution width {cfg.conv} before every mixer, lr {cfg.lr}, trained on {PAIRS_TRAIN} pairs + up to {FOLLOW_UP} "
             f"follow-up queries per row, {steps} steps x {size.batch_size}; "
             f"{n_test} test items per length; GPT {size.n_layer}x{size.n_embd}; eval curve = 1 - recall at {PAIRS_TRAIN[1]} pairs"]
    return Result(rows, curves, {"pairs_train": PAIRS_TRAIN}, figure, notes)
