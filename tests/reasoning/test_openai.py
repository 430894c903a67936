"""OpenAIModel against a tiny local OpenAI-compatible stub: good answers, garbage, errors, timeouts."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clmkit.errors import InputError
from clmkit.reasoning.evaluate import metrics, run
from clmkit.reasoning.lm import EndpointError, OpenAIModel, make_model, parse_model_spec
from clmkit.tasks.base import TaskItem


class Stub(BaseHTTPRequestHandler):
    """Answers by what the prompt contains: SLOW sleeps, GARBAGE sends non-JSON, BROKEN a 500, SHAPE odd JSON."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 — http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.seen.append({"body": body, "auth": self.headers.get("Authorization")})
        prompt = body["messages"][-1]["content"]
        if "SLOW" in prompt:
            time.sleep(1.0)
        if "BROKEN" in prompt:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal trouble")
            return
        if "GARBAGE" in prompt:
            payload = b"<html>definitely not json"
        elif "SHAPE" in prompt:
            payload = json.dumps({"result": "yes"}).encode()
        else:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Yes, it does.\nMore."}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)
        except BrokenPipeError:  # the client gave up (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_completion_request_and_stop(endpoint, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    model = OpenAIModel("tiny", endpoint, api_key_env="TEST_KEY", timeout=5)
    assert model.complete("Is it?", max_new_tokens=8, stop=["\n"]) == "Yes, it does."
    sent = Stub.seen[-1]
    assert sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "tiny" and sent["body"]["max_tokens"] == 8 and sent["body"]["stop"] == ["\n"]
    assert sent["body"]["messages"] == [{"role": "user", "content": "Is it?"}]


@pytest.mark.parametrize("prompt, message", [
    ("GARBAGE", "returned non-JSON"),
    ("SHAPE", "without choices[0].message.content"),
    ("BROKEN", "answered HTTP 500: internal trouble"),
    ("SLOW", "timed out after 0.3 s"),
])
def test_endpoint_failures_are_clear_errors(endpoint, prompt, message):
    with pytest.raises(EndpointError, match=re.escape(message)):
        OpenAIModel("tiny", endpoint, timeout=0.3).complete(prompt, max_new_tokens=4)


def test_unreachable_endpoint():
    with pytest.raises(EndpointError, match="cannot reach"):
        OpenAIModel("tiny", "http://127.0.0.1:9/v1", timeout=2).complete("hi", max_new_tokens=4)


def test_model_specs():
    assert parse_model_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_model_spec("smollm2-135m") == ("clmkit", "smollm2-135m")
    assert parse_model_spec("fake:no") == ("fake", "no")
    with pytest.raises(InputError):
        parse_model_spec("openai:")
    with pytest.raises(InputError, match="http"):
        make_model("openai:x", base_url="ftp://nowhere")
    with pytest.raises(InputError, match="only for --model openai"):
        make_model("smollm2-135m", base_url="http://localhost:8000/v1")


def test_a_run_records_per_row_errors_and_goes_on(endpoint, tmp_path):
    items = [TaskItem(f"r{i}", text, "yes", ["yes", "no"], {"answer_format": "yes/no"})
             for i, text in enumerate(["Is it?", "SLOW one", "GARBAGE one", "Is it really?"])]
    path = tmp_path / "preds.jsonl"
    records = run(items, OpenAIModel("tiny", endpoint, timeout=0.3), "direct", path)
    assert [r["id"] for r in records] == ["r0", "r1", "r2", "r3"]
    assert records[0]["prediction"] == "yes" and records[3]["prediction"] == "yes"
    assert "timed out" in records[1]["error"] and "non-JSON" in records[2]["error"]
    m = metrics(records)
    assert (m["n"], m["correct"], m["errors"], m["unparsed"]) == (4, 2, 2, 0)
    assert len(path.read_text().splitlines()) == 4
