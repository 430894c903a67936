"""Value-guided rectification (Cao et al., 2023, "Systematic Rectification of Language Models via Dead-end Analysis").

Detoxification as dead-end avoidance: an undesired output is a terminal state with reward -1, and the
dead-end value Q_D(s, a) in [-1, 0] is minus the probability that, from prefix s, emitting token a
ends in an undesired output. Dead-end theory (Fatemi et al., 2019) gives the security condition
pi(a | s) <= 1 + Q_D(s, a): a policy that only keeps tokens whose risk -Q_D(s, a) is at most a
threshold lambda keeps, at every step, the probability of heading into an undesired output below
lambda (with exact Q_D), while changing the LM as little as possible: tokens under the threshold keep
their relative probabilities, and the total variation from the LM at a step is the mass it masks.

Here: risk(s, a) = sigmoid(ValueHead(h_s, e_a)), a low-rank bilinear head on the LM's last hidden state
h_s and its (frozen) output embedding e_a, trained on the model's own sampled rollouts labelled by a
detector (`clm guide train-rectifier`, clmkit/guide/bench/rectify.py). The guide masks every token
whose risk exceeds the threshold (the least risky token always stays). Hidden states are read from
the LM head's input by a forward hook, so it needs the torch backend.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from clmkit.errors import ClmkitError, InputError
from clmkit.files import atomic_write
from clmkit.guide import register


class ValueHead(nn.Module):
    """risk logits [n, vocab] = (U h) . (V e_a) + b_a: every token's dead-end risk from one hidden state."""

    def __init__(self, hidden: int, rank: int = 64):
        super().__init__()
        self.state = nn.Linear(hidden, rank)
        self.token = nn.Linear(hidden, rank, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))
        self.hidden, self.rank = hidden, rank

    def forward(self, h: torch.Tensor, token_emb: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Risk logits for all tokens ([n, vocab]) or, with `tokens` [n], for one token per row ([n])."""
        s = self.state(h.float())
        if tokens is not None:
            return (s * self.token(token_emb[tokens].float())).sum(-1) + self.bias
        return s @ self.token(token_emb.float()).T + self.bias


def save_head(head: ValueHead, path: Path, config: dict) -> None:
    """safetensors + JSON config, each written atomically."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in head.state_dict().items()}
    atomic_write(path / "head.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    text = json.dumps({**config, "hidden": head.hidden, "rank": head.rank}, indent=1)
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(text))


def load_head(path: Path) -> tuple[ValueHead, dict]:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "head.safetensors").is_file() or not (path / "config.json").is_file():
        raise InputError(f"{path} is not a rectifier (needs head.safetensors and config.json from clm guide train-rectifier)")
    config = json.loads((path / "config.json").read_text())
    head = ValueHead(config["hidden"], config["rank"])
    head.load_state_dict(load_file(str(path / "head.safetensors")))
    return head.eval(), config


class WordList:
    """An "undesired" detector from a word list: 1.0 if any listed word occurs (whole word, any case)."""

    def __init__(self, words: list[str]):
        words = [w.strip() for w in words if w.strip()]
        if not words:
            raise InputError("the word list is empty")
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def __call__(self, texts: list[str]) -> list[float]:
        return [1.0 if self.pattern.search(t) else 0.0 for t in texts]


def profanity_detector():
    """alt-profanity-check's offensive-language classifier (its model ships in the wheel): P(offensive)."""
    try:
        from profanity_check import predict_prob
    except ImportError as e:
        raise InputError("the default detector needs alt-profanity-check: pip install alt-profanity-check==1.9.1 "
                         "(or pass a word list)") from e
    return lambda texts: [float(p) for p in predict_prob(list(texts))]


def watch_hidden(lm_head: nn.Module) -> nn.Module:
    """Keep the input of the LM head (the last hidden states) of every forward on `lm_head.clmkit_hidden`.
    One hook per module, however many guides read it."""
    if not hasattr(lm_head, "clmkit_hidden"):
        def capture(module, args) -> None:
            module.clmkit_hidden = args[0].detach().reshape(-1, args[0].shape[-1])

        lm_head.clmkit_hidden = None
        lm_head.register_forward_pre_hook(capture)
    return lm_head


@register("rectify")
class Rectify:
    name = "rectify"
    reweights = True
    greedy_only = False

    def __init__(self, model, path: Path | str | None = None, head: ValueHead | None = None, threshold: float | None = None):
        if (path is None) == (head is None):
            raise InputError("rectify needs a trained value head: path=... (clm guide train-rectifier) or head=...")
        config = {}
        if head is None:
            head, config = load_head(Path(path))
        self.threshold = float(threshold if threshold is not None else config.get("threshold", 0.5))
        if not 0 < self.threshold < 1:
            raise InputError(f"the rectification threshold is a probability in (0, 1), got {self.threshold}")
        self.head = head
        self.embeddings = model.module.get_output_embeddings().weight.detach()
        if self.embeddings.shape[1] != head.hidden:
            raise InputError(f"this rectifier was trained for hidden size {head.hidden}, {model.name} has {self.embeddings.shape[1]}")
        self.eos_ids = frozenset(model.eos_token_ids)
        with torch.no_grad():  # V e_a for every token, once: the head's token side never changes
            self.token_keys = head.token(self.embeddings.float())
        self.masked_mass = 0.0  # total probability mass removed (the distribution shift), for reporting
        self.steps = 0
        # Watch the LM head of the module the backend actually runs: a oneDNN kernel runs a copy of
        # `model.module` whose linears are swapped, and the original's head would never see a forward.
        running = getattr(model.runner(), "module", model.module)
        self.lm_head = watch_hidden(running.get_output_embeddings())

    @property
    def hidden(self) -> torch.Tensor | None:
        """[n, d]: the last hidden states of the model's latest forward (one row per scored position)."""
        return getattr(self.lm_head, "clmkit_hidden", None)

    def begin(self, prompt_ids: list[int], sampling=None) -> None:
        self.masked_mass, self.steps = 0.0, 0

    def allowed(self):
        return None

    @torch.inference_mode()
    def reweight(self, logits: torch.Tensor, node: int) -> torch.Tensor:
        if self.hidden is None:
            raise ClmkitError("rectify reads the LM's hidden states through the torch backend; none were captured")
        state = self.head.state(self.hidden[node][None].float())
        risk = torch.sigmoid(state @ self.token_keys.T + self.head.bias)[0, : logits.numel()]  # = head(h, embeddings)
        unsafe = risk > self.threshold
        unsafe[risk.argmin()] = False  # never mask every token
        if node in (0, -1):  # the root's (or prefill's) distribution is the one actually sampled from next: account its shift
            self.masked_mass += float(torch.softmax(logits.float(), -1)[unsafe].sum())
            self.steps += 1
        return logits.masked_fill(unsafe, float("-inf"))

    def advance(self, tokens: list[int]) -> None:
        pass

    def rollback(self, n: int) -> None:
        pass

    @property
    def finished(self) -> bool:
        return False

    @property
    def complete(self) -> bool:
        return True
