"""Servers for the tests: uvicorn in a thread on a free loopback port, stopped after (no fixed ports)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest

openai = pytest.importorskip("openai")


@dataclass
class Served:
    url: str
    app: object

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def client(self, api_key: str = "unused", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)


@contextlib.contextmanager
def serving(model, **options):
    from clmkit.server.app import create_app, running

    app = create_app(model, **options)
    with running(app) as url:
        yield Served(url, app)


@pytest.fixture(scope="module")
def served(tiny_llama):
    with serving(tiny_llama) as s:
        yield s


@pytest.fixture(scope="module")
def client(served):
    return served.client()
