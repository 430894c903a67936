"""Decoder-Only or Encoder-Decoder? Interpreting Language Model as a Regularized Encoder-Decoder
(Fu et al., 2023) and Return of the Encoder: Maximizing Parameter Efficiency for SLMs (Elfeki et al., 2025).

Fu et al.: a decoder-only LM is an encoder–decoder whose "encoder" is its own prefix; as generation
gets longer, attention to the source dilutes ("attention degeneration"), so quality drops with
target position more than for an encoder–decoder. Elfeki et al.: at small scale an encoder–decoder
of equal parameters has lower first-token latency and higher throughput, and can be distilled from a
decoder-only teacher.

Setting: seq2seq on real text — the source is a window of Python-reference prose of 8..48 tokens and
a task marker; the target is the window copied or reversed. Decoder-only (n_layer + 1 layers, rows
"<task> src <sep> tgt <eos>") vs encoder–decoder (n_layer/2 + n_layer/2 with cross-attention): about
equal parameters (reported). Measured on held-out windows: greedy exact match and per-position token
accuracy (attention degeneration) by source length; first-token latency and decode throughput (no KV
cache in either: every step re-runs its decoder, the encoder runs once); and knowledge distillation:
an encoder–decoder student trained on the decoder-only teacher's distributions (KD, 0.5 KL + 0.5 CE)
vs one trained on data only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import save, subplots, Size, fit, gpt_config, lm_objective_loss
from clmkit.lab.model import GPT
from clmkit.lab.objectives import IGNORE, py_rng, seq2seq


@dataclass
class Config:
    steps: int = 2000
    lr: float = 1e-3
    min_len: int = 8
    max_len: int = 48
    eval_lengths: tuple[int, ...] = (8, 16, 32, 48)
    eval_items: int = 48
    timing_repeats: int = 21


TASKS = ("copy", "reverse")


def make_pairs(stream, tok, n: int, g: torch.Generator, lengths: tuple[int, int] | None = None, fixed: int | None = None):
    """n (source, target) pairs: <task> + window -> window or reversed window."""
    rng = py_rng(g)
    pairs = []
    for _ in range(n):
        k = fixed or rng.randint(*lengths)
        window = stream.windows(1, k, g)[0].tolist()
        task = rng.randrange(len(TASKS))
        target = window if TASKS[task] == "copy" else window[::-1]
        pairs.append(([tok.sentinels[task]] + window, target))
    return pairs


def layout(arch: str) -> str:
    return "encdec" if arch == "encoder-decoder" else "causal"


def greedy(model, arch: str, pairs, tok, steps: int, device: str) -> torch.Tensor:
    """Greedy targets of `steps` tokens for same-length sources, (B, steps)."""
    src = torch.tensor([s for s, _ in pairs], device=device)
    B = len(pairs)
    out = torch.empty(B, 0, dtype=torch.long, device=device)
    sep = torch.full((B, 1), tok.sep, device=device)
    with torch.no_grad():
        memory = model.encode(src) if arch == "encoder-decoder" else None
        for _ in range(steps):
            if memory is not None:
                h = model.hidden(torch.cat([sep, out], 1), memory=memory)
            else:
                h = model.hidden(torch.cat([src, sep, out], 1))
            nxt = model.logits(h[:, -1:]).argmax(-1)
            out = torch.cat([out, nxt], 1)
    return out.cpu()


def evaluate(model, arch, tok, val_stream, cfg: Config, n: int, device: str) -> dict:
    out = {}
    for k in cfg.eval_lengths:
        pairs = make_pairs(val_stream, tok, n, torch.Generator().manual_seed(60 + k), fixed=k)
        pred = greedy(model, arch, pairs, tok, k, device)
        gold = torch.tensor([t for _, t in pairs])
        correct = pred == gold
        out[k] = {"exact": correct.all(1).float().mean().item(), "per_position": correct.float().mean(0).tolist()}
    return out


def timings(models: dict, tok, val_stream, cfg: Config, device: str, batch: int) -> dict:
    """name -> (first-token latency ms, decode tokens/s) for `batch` sources of max_len tokens; the
    models take turns within every repeat (a load spike on a shared machine hits all alike), and the
    best repeat is kept: on a loaded machine the least-disturbed run is the estimate of the model's cost."""
    pairs = make_pairs(val_stream, tok, batch, torch.Generator().manual_seed(7), fixed=cfg.max_len)
    firsts, rates = {n: [] for n in models}, {n: [] for n in models}
    for model, arch in models.values():
        greedy(model, arch, pairs, tok, 2, device)  # warm-up: first calls allocate
    for _ in range(cfg.timing_repeats):
        for name, (model, arch) in models.items():
            t0 = time.perf_counter()
            greedy(model, arch, pairs, tok, 1, device)
            t1 = time.perf_counter()
            greedy(model, arch, pairs, tok, cfg.max_len, device)
            t2 = time.perf_counter()
            firsts[name].append((t1 - t0) * 1000)
            rates[name].append(batch * cfg.max_len / (t2 - t1))
    return {n: (min(firsts[n]), max(rates[n])) for n in models}


def distil_loss(student: GPT, teacher: GPT, pairs_batch, alpha: float = 0.5) -> torch.Tensor:
    """alpha KL(teacher || student) + (1 - alpha) CE(data) on the target tokens (Hinton-style KD); the
    teacher reads the decoder-only layout of the same pairs."""
    enc, dec = pairs_batch
    with torch.no_grad():
        t_logits = teacher(dec.input_ids, pad=dec.pad)
    t_logp = F.log_softmax(t_logits[dec.targets != IGNORE].float(), -1)
    s_logits = student(enc.input_ids, **enc.model_inputs())
    s_logp = F.log_softmax(s_logits[enc.targets != IGNORE].float(), -1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    return alpha * kl + (1 - alpha) * F.nll_loss(s_logp, enc.targets[enc.targets != IGNORE])


@register("encdec-vs-dec", paper="Decoder-Only or Encoder-Decoder? (Fu et al., 2023) + Return of the Encoder (Elfeki et al., 2025)",
          claim="decoder-only attention to the source degenerates with output length; enc-dec has a latency advantage at equal parameters")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    if ctx.tiny:
        cfg.min_len, cfg.max_len, cfg.eval_lengths, cfg.timing_repeats = 4, 8, (4, 8), 1
    fits = (size.block_size + 16 - 3) // 2  # the decoder-only row holds task + source, <sep>, target, <eos>
    if cfg.max_len > fits:
        cfg.max_len = fits
        cfg.eval_lengths = tuple(k for k in cfg.eval_lengths if k < fits) + (fits,)
    steps = ctx.steps(cfg.steps)
    n_eval = ctx.count(cfg.eval_items)
    archs = {"decoder-only": dict(n_layer=size.n_layer + 1),
             "encoder-decoder": dict(n_layer=size.n_layer // 2, n_encoder_layer=size.n_layer // 2)}

    def data(arch):
        return lambda step, g: seq2seq(make_pairs(train_stream, tok, size.batch_size, g, (cfg.min_len, cfg.max_len)), tok, layout(arch))

    models, curves, rows, evals = {}, {}, [], {}
    for arch, layers in archs.items():
        torch.manual_seed(ctx.seed)
        models[arch] = GPT(gpt_config(tok, size, **layers))
        curves[arch] = fit(ctx, arch, models[arch], data(arch), steps, None, cfg.lr, size.batch_size)

    # distillation: an encoder–decoder student of the decoder-only teacher, same steps as from data
    teacher = models["decoder-only"]
    torch.manual_seed(ctx.seed)
    student = GPT(gpt_config(tok, size, **archs["encoder-decoder"]))

    def both(step, g):
        pairs = make_pairs(train_stream, tok, size.batch_size, g, (cfg.min_len, cfg.max_len))
        return seq2seq(pairs, tok, "encdec").to(ctx.device), seq2seq(pairs, tok, "causal").to(ctx.device)

    curves["encoder-decoder, distilled"] = fit(ctx, "distilled", student, both, steps, None, cfg.lr, size.batch_size,
                                               loss_fn=lambda m, b: distil_loss(m, teacher, b))
    models["encoder-decoder, distilled"] = student

    with_arch = {name: (m, "decoder-only" if name == "decoder-only" else "encoder-decoder") for name, m in models.items()}
    b1 = timings(with_arch, tok, val_stream, cfg, ctx.device, 1)
    b16 = timings(with_arch, tok, val_stream, cfg, ctx.device, 16)
    for name, (model, arch) in with_arch.items():
        evals[name] = evaluate(model, arch, tok, val_stream, cfg, n_eval, ctx.device)
        (first1, rate1), (_, rate16) = b1[name], b16[name]
        row = {"variant": name, "params": model.num_params()}
        for k, e in evals[name].items():
            row[f"exact@{k}"] = round(e["exact"], 4)
        longest = evals[name][cfg.eval_lengths[-1]]["per_position"]
        q = max(1, len(longest) // 4)
        row[f"acc q1/q4 @{cfg.eval_lengths[-1]}"] = f"{sum(longest[:q]) / q:.3f} / {sum(longest[-q:]) / q:.3f}"
        row.update({"TTFT ms b1": round(first1, 2), "tok/s b1": round(rate1, 1), "tok/s b16": round(rate16, 1)})
        rows.append(row)
    # held-out loss of every model on the same pairs, in its own layout
    val_pairs = make_pairs(val_stream, tok, n_eval, torch.Generator().manual_seed(77), (cfg.min_len, cfg.max_len))
    with torch.no_grad():
        for row in rows:
            arch = "decoder-only" if row["variant"] == "decoder-only" else "encoder-decoder"
            row["val loss"] = round(lm_objective_loss(models[row["variant"]], seq2seq(val_pairs, tok, layout(arch)).to(ctx.device)).item(), 4)

    def figure(path):
        fig, (a1, a2) = subplots(2, figsize=(9, 3.6))
        k = cfg.eval_lengths[-1]
        for i, (name, e) in enumerate(evals.items()):
            a1.plot(range(1, k + 1), e[k]["per_position"], color=f"C{i}", label=name)
            a2.plot(cfg.eval_lengths, [e[n]["exact"] for n in cfg.eval_lengths], "o-", color=f"C{i}", label=name)
        a1.set_xlabel(f"target position (source of {k} tokens)")
        a1.set_ylabel("greedy token accuracy")
        a1.set_ylim(0, 1.02)
        a2.set_xlabel("source length (tokens)")
        a2.set_ylabel("exact match")
        a2.set_ylim(0, 1.02)
        a1.legend(fontsize=7)
        fig.suptitle("copy / reverse on real text: decoder-only vs encoder-decoder")
        save(fig, path)

    notes = [f"copy+reverse of Python-reference windows of {cfg.min_len}..{cfg.max_len} tokens; decoder-only {size.n_layer + 1} layers vs "
             f"enc-dec {size.n_layer // 2}+{size.n_layer // 2} x {size.n_embd}; {steps} steps x {size.batch_size} pairs each; "
             f"{n_eval} held-out pairs per length; timing: no KV cache in either model, best of {cfg.timing_repeats} interleaved repeats, "
             f"{torch.get_num_threads()} threads, shared machine"]
    return Result(rows, curves, {"eval": evals}, figure, notes)
