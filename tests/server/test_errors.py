"""Every bad input gets an OpenAI error object with a 4xx status, and the server keeps serving."""

from __future__ import annotations

import httpx2
import pytest
from typer.testing import CliRunner

from clmkit.errors import InputError
from clmkit.server.app import ServerConfig
from clmkit.server.cli import check_bind
from tests.server.conftest import openai, serving

MSG = [{"role": "user", "content": "hello"}]
CHAT = {"model": "tiny-llama", "messages": MSG, "max_tokens": 4}

BAD = [  # (endpoint, body, status, param or code in the error)
    ("chat", {**CHAT, "model": "gpt-4o"}, 404, "model_not_found"),
    ("chat", {**CHAT, "max_tokens": 10_000}, 400, "max_tokens"),
    ("chat", {**CHAT, "max_completion_tokens": 253}, 400, "context_length_exceeded"),
    ("chat", {**CHAT, "messages": [{"role": "user", "content": "hello world " * 200}]}, 400, "context_length_exceeded"),
    ("chat", {**CHAT, "max_tokens": "4"}, 400, "max_tokens"),
    ("chat", {**CHAT, "messages": "hello"}, 400, "messages"),
    ("chat", {**CHAT, "messages": []}, 400, "messages"),
    ("chat", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("chat", {**CHAT, "n": 9}, 400, "n"),
    ("chat", {**CHAT, "n": 0}, 400, "n"),
    ("chat", {**CHAT, "temperature": -0.5}, 400, "temperature"),
    ("chat", {**CHAT, "temperature": 2.5}, 400, "temperature"),
    ("chat", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("chat", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("chat", {**CHAT, "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs"),
    ("chat", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("chat", {**CHAT, "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ("chat", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400,
     "response_format.json_schema.schema"),
    ("chat", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("chat", {**CHAT, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("chat", {**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("completions", {"model": "tiny-llama", "prompt": [99999], "max_tokens": 2}, 400, "prompt"),
    ("completions", {"model": "tiny-llama", "prompt": "   ", "max_tokens": 2}, 400, "prompt"),
    ("completions", {"model": "tiny-llama", "prompt": "hi", "echo": True}, 400, "echo"),
    ("completions", {"model": "tiny-llama", "prompt": ["a", "b", "c"], "n": 3}, 400, "n"),
    ("completions", {"model": "tiny-llama"}, 400, "prompt"),
]


@pytest.mark.parametrize("endpoint,body,status,where", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_error_objects(served, endpoint, body, status, where):
    r = httpx2.post(f"{served.url}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}", json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    assert where in (error["param"], error["code"]), error


def test_malformed_json_body_size_and_unknown_route(served):
    for raw in (b"{not json", b"[1, 2]", b'"text"', b""):
        r = httpx2.post(served.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"], raw
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    r = httpx2.post(served.url + "/v1/chat/completions", json=huge, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx2.get(served.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    ok = httpx2.post(served.url + "/v1/chat/completions", json=CHAT, timeout=30)  # still serving
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_errors_surface_as_the_clients_exception_types(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-llama", messages=MSG, temperature=7)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-llama", prompt="hi", max_tokens=100_000)


def test_api_key(tiny_llama):
    with serving(tiny_llama, config=ServerConfig(api_key="sesame")) as s:
        with pytest.raises(openai.AuthenticationError):
            s.client().chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="open sesame").models.list()
        assert httpx2.get(s.url + "/v1/models").status_code == 401
        assert httpx2.get(s.url + "/metrics").status_code == 401
        assert httpx2.get(s.url + "/health").status_code == 200  # liveness probes carry no key
        assert s.client(api_key="sesame").chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2).choices


def test_no_key_means_loopback_only():
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, None, False)
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(InputError, match="--api-key"):
            check_bind(host, None, False)
        check_bind(host, "key", False)
        check_bind(host, None, True)  # --insecure
    from clmkit.cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-key" in result.output
