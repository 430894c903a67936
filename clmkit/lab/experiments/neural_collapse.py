"""Neural collapse in language models: *Linguistic Collapse: Neural Collapse in (Large) Language Models*
(Wu & Papyan, 2024).

Treat next-token prediction as classification: the class of a context is its next token, its feature
the top-layer hidden state h (after the final norm), the classifier the unembedding W. Neural collapse
(Papyan et al., 2020) is the geometry classifiers reach at the end of training:
  NC1  within-class variability vanishes next to the between-class spread: tr(S_W S_B^+) / C
  NC2  centred class means become equinorm (CV of their norms) and equiangular (std of their cosines)
  NC3  class means align with their classifier rows (self-duality): || W/|W| - M/|M| ||_F
  NC4  the classifier agrees with the nearest-class-mean rule (1 - agreement reported)
Lower is "more collapsed" for every number. The paper finds collapse grows with scale and training
and correlates with generalisation (held-out loss).

Setting: lab GPTs of three widths trained on prose, metrics at several points of training on held-out
windows (the C most frequent next tokens as classes); plus the embedded SmolLM2-135M on the same prose
with its own tokenizer. Simplified: the paper uses TinyStories models up to 400M params and the full
vocabulary as classes; here a few M params and the top classes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.lab.corpora import corpus_streams, default_tokenizer, reference_documents, split
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, fit, fixed_eval, gpt_config, save, subplots
from clmkit.lab.model import GPT
from clmkit.lab.objectives import next_token

METRICS = ("NC1", "NC2 equinorm", "NC2 equiangular", "NC3 self-duality", "NC4 1-agreement")


@dataclass
class Config:
    steps: int = 1500
    lr: float = 1e-3
    widths: tuple[int, ...] = (64, 128, 192)
    classes: int = 64
    min_per_class: int = 10
    eval_windows: int = 96
    embedded_chars: int = 60_000


def collapse_metrics(h: torch.Tensor, labels: torch.Tensor, W: torch.Tensor, classes: int, min_per_class: int) -> dict:
    """NC1-NC4 of features h (N, d) with next-token labels (N,) against unembedding W (V, d), over the
    `classes` most frequent labels that have at least `min_per_class` samples."""
    counts = torch.bincount(labels, minlength=W.shape[0])
    top = counts.argsort(descending=True)[:classes]
    top = top[counts[top] >= min_per_class]
    C = len(top)
    if C < 3:
        raise ValueError(f"only {C} classes with >= {min_per_class} samples: give more text")
    keep = torch.isin(labels, top)
    h, labels, W_top = h[keep].double(), labels[keep], W[top].double()
    index = torch.full((W.shape[0],), -1, dtype=torch.long)
    index[top] = torch.arange(C)
    y = index[labels]
    means = torch.zeros(C, h.shape[1], dtype=h.dtype).index_add_(0, y, h) / torch.bincount(y, minlength=C)[:, None]
    centred = means - means.mean(0)
    within = h - means[y]
    S_W = within.T @ within / len(h)
    S_B = centred.T @ centred / C
    nc1 = torch.trace(S_W @ torch.linalg.pinv(S_B, hermitian=True)).item() / C
    norms = centred.norm(dim=1)
    unit = centred / norms[:, None]
    cos = unit @ unit.T
    off = cos[~torch.eye(C, dtype=torch.bool)]
    Wc = W_top - W_top.mean(0)
    nc3 = (Wc / Wc.norm() - centred / centred.norm()).norm().item()
    classifier = (h @ W_top.T).argmax(1)
    nearest = torch.cdist(h, means).argmin(1)
    return {"NC1": nc1, "NC2 equinorm": (norms.std() / norms.mean()).item(), "NC2 equiangular": off.std().item(),
            "NC3 self-duality": nc3, "NC4 1-agreement": 1 - (classifier == nearest).double().mean().item(), "classes": C}


def lab_features(model: GPT, rows: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next_token(rows).to(device)
    with torch.no_grad():
        h = model.hidden(batch.input_ids)
    return h.reshape(-1, h.shape[-1]).cpu(), batch.targets.reshape(-1).cpu()


def embedded_metrics(text: str, cfg: Config) -> dict:
    """The same metrics for the embedded SmolLM2-135M: final-norm hidden states vs its lm_head."""
    from clmkit.models import load

    model = load("smollm2-135m")
    ids = torch.tensor(model.tokenizer(text)["input_ids"])
    window = 512
    feats, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            out = model.module(input_ids=chunk[None, :-1], output_hidden_states=True)
            feats.append(out.hidden_states[-1][0].float())
            labels.append(chunk[1:])
        W = model.module.get_output_embeddings().weight.float()
    return collapse_metrics(torch.cat(feats), torch.cat(labels), W, cfg.classes, cfg.min_per_class)


@register("neural-collapse", paper="Linguistic Collapse: Neural Collapse in (Large) Language Models (Wu & Papyan, 2024)",
          claim="NC1-NC4 of top-layer features vs the unembedding grow with scale and training and correlate with generalisation")
def run(ctx: Context) -> Result:
    cfg = Config()
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    base = Size.for_ctx(ctx)
    L = base.block_size + 1
    steps = ctx.steps(cfg.steps)
    eval_rows = val_stream.windows(ctx.count(cfg.eval_windows), L, torch.Generator().manual_seed(21))
    val_batch = lambda i, g: next_token(val_stream.windows(base.batch_size, L, g))  # noqa: E731
    widths = (base.n_embd // 2, base.n_embd) if ctx.tiny else cfg.widths
    classes, min_per_class = (16, 2) if ctx.tiny else (cfg.classes, cfg.min_per_class)

    rows, curves, over_training = [], {}, {}
    for width in widths:
        torch.manual_seed(ctx.seed)
        model = GPT(gpt_config(tok, base, n_embd=width))
        name = f"GPT {base.n_layer}x{width}"
        trace = over_training.setdefault(name, [])

        def evaluate(model=model, trace=trace):
            m = collapse_metrics(*lab_features(model, eval_rows, ctx.device), model.wte.weight.detach().cpu(), classes, min_per_class)
            trace.append(m)
            return fixed_eval(model, val_batch, ctx.count(4, 2), ctx.device)

        curves[name] = fit(ctx, name, model, lambda step, g: next_token(train_stream.windows(base.batch_size, L, g)),
                           steps, evaluate, cfg.lr, base.batch_size)
        for m, step in zip(trace, curves[name].eval_steps):
            m["step"] = step
        rows.append({"variant": name, "params (M)": round(model.num_params() / 1e6, 2),
                     "val loss": curves[name].eval_loss[-1], **{k: round(trace[-1][k], 4) for k in METRICS}})
    extra = {"over_training": over_training}
    if not ctx.tiny:
        docs = split(reference_documents(), True)
        text = "\n\n".join(docs)[: cfg.embedded_chars]
        m = embedded_metrics(text, cfg)
        rows.append({"variant": "SmolLM2-135M (embedded)", "params (M)": 134.5, "val loss": "",
                     **{k: round(m[k], 4) for k in METRICS}})
        extra["embedded"] = m

    def figure(path):
        fig, axes = subplots(ncols=len(METRICS), figsize=(3 * len(METRICS), 3.2))
        for ax, metric in zip(axes, METRICS):
            for name, trace in over_training.items():
                ax.plot([m["step"] for m in trace], [m[metric] for m in trace], marker="o", ms=3, label=name)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_yscale("log")
        axes[0].legend(fontsize=7)
        save(fig, path)

    notes = [f"prose (Python reference), {steps} steps x {base.batch_size} rows of {L - 1} tokens; metrics on "
             f"{len(eval_rows)} held-out windows, classes = the {classes} most frequent next tokens (>= {min_per_class} samples)"]
    return Result(rows, curves, extra, figure, notes)
