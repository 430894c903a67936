"""Text-in, text-out models for the reasoning strategies.

    model = make_model("smollm2-135m")                              # clmkit's own engine
    model = make_model("openai:gpt-4o-mini", base_url="https://api.openai.com/v1")
    text = model.complete("Is the sky blue?", max_new_tokens=16, stop=["\\n"])

`OpenAIModel` speaks the OpenAI-compatible chat-completions HTTP API with the standard library
only; a timeout, an HTTP error or a body that is not the expected JSON raises `EndpointError`
with one clear line, which the evaluator records for that row before moving on.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from clmkit.errors import ClmkitError, InputError


class EndpointError(ClmkitError):
    """A model endpoint timed out, failed, or answered with something that is not a completion."""


class TextModel(Protocol):
    name: str

    def complete(self, prompt: str, *, max_new_tokens: int, stop: list[str] | None = None) -> str: ...


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]


class ClmkitModel:
    """A model run by clmkit's own decoding engine (greedy, chat template when the model has one).

    `drafter` (e.g. "recycling") speeds decoding up losslessly: greedy output is token-identical.
    `backend`: "torch" (HF's fp32 forward, the reference), "llama.cpp" (the GGUF's quantized kernels:
    faster decoding, slower prefill here; greedy answers equal torch's up to near-ties, see
    docs/reasoning.md) or "auto" (llama.cpp for GGUF / embedded models when llama-cpp-python is installed)."""

    def __init__(self, name: str, chat: bool | None = None, drafter: str | None = None, backend: str = "torch"):
        from clmkit import Engine, load  # lazy: importing this module must not import torch

        self.name = name
        self.chat = chat
        self.engine = Engine(load(name, backend=backend), drafter=drafter)
        self.backend = self.engine.backend.name  # recorded with every prediction

    def complete(self, prompt: str, *, max_new_tokens: int, stop: list[str] | None = None) -> str:
        completion = self.engine.complete(prompt, max_new_tokens=max_new_tokens, temperature=0.0,
                                          stop=list(stop or []), chat=self.chat)
        return _cut_at_stop(completion.text, stop)

    def loglikelihood(self, prompt: str, choices: list[str]):
        """log p(choice | prompt) per choice, all choices in one forward (see reasoning/loglik.py)."""
        from clmkit.reasoning.loglik import model_loglikelihood

        return model_loglikelihood(self.engine, prompt, choices, self.chat)


class OpenAIModel:
    """An OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, llama.cpp server, ...)."""

    def __init__(self, name: str, base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, temperature: float = 0.0):
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.temperature = temperature

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str, *, max_new_tokens: int, stop: list[str] | None = None) -> str:
        body = {"model": self.name, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens, "temperature": self.temperature}
        if stop:
            body["stop"] = list(stop)[:4]  # the API takes at most four
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").strip()
            raise EndpointError(f"{self.url} answered HTTP {e.code}: {detail or e.reason}") from None
        except (TimeoutError, socket.timeout):
            raise EndpointError(f"{self.url} timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise EndpointError(f"{self.url} timed out after {self.timeout:g} s") from None
            raise EndpointError(f"cannot reach {self.url}: {e.reason}") from None
        except OSError as e:  # connection reset mid-read, ...
            raise EndpointError(f"{self.url}: {e}") from None
        try:
            payload = json.loads(raw)
        except ValueError:
            snippet = raw[:80].decode("utf-8", "replace")
            raise EndpointError(f"{self.url} returned non-JSON: {snippet!r}") from None
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url} returned JSON without choices[0].message.content: "
                                f"{json.dumps(payload)[:120]}") from None
        if not isinstance(text, str):
            raise EndpointError(f"{self.url} returned a non-text completion: {text!r:.80}")
        return _cut_at_stop(text, stop)


@dataclass
class FakeModel:
    """A scripted model for tests: `reply(prompt)` or a list of replies used in turn (the last repeats)."""

    replies: list[str] | Callable[[str], str] = field(default_factory=lambda: ["yes"])
    name: str = "fake"
    calls: list[str] = field(default_factory=list)

    def complete(self, prompt: str, *, max_new_tokens: int, stop: list[str] | None = None) -> str:
        self.calls.append(prompt)
        if callable(self.replies):
            text = self.replies(prompt)
        else:
            text = self.replies[min(len(self.calls), len(self.replies)) - 1]
        return _cut_at_stop(text, stop)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'openai:NAME' -> ('openai', 'NAME'); 'fake' / 'fake:yes' -> ('fake', ...); else ('clmkit', spec)."""
    kind, sep, name = spec.partition(":")
    if sep and kind in ("openai", "fake"):
        if kind == "openai" and not name:
            raise InputError("--model openai:NAME needs a model name after 'openai:'")
        return kind, name
    if spec == "fake":
        return "fake", ""
    return "clmkit", spec


def make_model(spec: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
               timeout: float = 60.0, drafter: str | None = None, backend: str = "torch") -> TextModel:
    from clmkit.backends import check_name

    kind, name = parse_model_spec(spec)
    check_name(backend)
    if drafter and kind != "clmkit":
        raise InputError("--drafter is only for clmkit models (speculative decoding runs locally)")
    if backend not in ("auto", "torch") and kind != "clmkit":
        raise InputError(f"--backend {backend} is only for clmkit models (an endpoint runs its own)")
    if kind == "openai":
        return OpenAIModel(name, base_url or "https://api.openai.com/v1", api_key_env=api_key_env, timeout=timeout)
    if kind == "fake":  # "fake:yes" always answers "yes" (smoke tests of the pipeline)
        return FakeModel([name or "yes"])
    if base_url:
        raise InputError("--base-url is only for --model openai:NAME")
    return ClmkitModel(name, drafter=drafter, backend=backend)
