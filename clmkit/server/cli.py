"""`clm serve` and the server benchmarks (`clm bench serve-load`, `clm bench serve-concurrency`).

    clm serve                                   # the embedded model on http://127.0.0.1:8000/v1
    clm serve --drafter recycling --port 8080   # speculative decoding: same output, faster
    clm serve --host 0.0.0.0 --api-key "$KEY"   # reachable from other machines: a key is required

`clmkit.cli` mounts these with `register(app, bench_app)`. FastAPI and uvicorn are imported inside
the commands so `clm --help` stays fast.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer

from clmkit.errors import InputError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """No key means local use only: refuse a non-loopback bind unless --insecure says otherwise."""
    if api_key is not None and not api_key.strip():
        raise InputError("--api-key is empty")
    if not is_loopback(host) and api_key is None and not insecure:
        raise InputError(f"refusing to serve on {host} without --api-key: anyone who can reach it could use the model; "
                         "give --api-key KEY (or --insecure to serve without one)")


def serve(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Embedded name, HF model directory, or .gguf file."),
    backend: str = typer.Option("auto", "--backend", help="auto (llama.cpp for GGUF when installed, else torch), torch, llama.cpp."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="torch backend: auto (measured), hf, onednn, onednn-bf16."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (non-loopback needs --api-key or --insecure)."),
    port: int = typer.Option(8000, "--port", "-p"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="CLMKIT_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without --api-key."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Speculative drafter (see `clm drafters`): same output, faster."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="For draft/dyspec/rsd: a model sharing the tokenizer, or self:N."),
    tree_budget: Optional[int] = typer.Option(None, "--tree-budget", help="Draft tokens per step."),
    option: list[str] = typer.Option([], "--option", "-O", help="Drafter option KEY=VALUE (repeatable)."),
    max_active: int = typer.Option(8, "--max-active", help="Sequences decoding at once; more wait in the queue."),
    max_waiting: int = typer.Option(256, "--max-waiting", help="Queued sequences beyond which requests get 429."),
    max_n: int = typer.Option(8, "--max-n", help="Most choices per request (n x prompts)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most new tokens per choice (default: the context)."),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help="New tokens when a request gives no max_tokens."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Larger request bodies get 413."),
    log_level: str = typer.Option("info", "--log-level"),
):
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...)."""
    from clmkit.cli import drafter_options, user_errors

    with user_errors():
        check_bind(host, api_key, insecure)
        if not 0 < port < 65536:
            raise InputError(f"--port must be in 1..65535, got {port}")
        for flag, value in (("--max-active", max_active), ("--max-waiting", max_waiting), ("--max-n", max_n),
                            ("--default-max-tokens", default_max_tokens), ("--max-body-bytes", max_body_bytes),
                            ("--max-tokens", max_tokens or 1)):
            if value < 1:
                raise InputError(f"{flag} must be >= 1, got {value}")
        if drafter is None and (draft_model or tree_budget is not None or option):
            raise InputError("--draft-model, --tree-budget and --option need --drafter")
        import uvicorn

        from clmkit.backends import load_for_cli
        from clmkit.drafters._trained import needs_torch
        from clmkit.server.app import ServerConfig, create_app, listening_socket

        backend = "torch" if backend == "auto" and needs_torch(drafter) else backend  # trained drafters read hidden states
        loaded = load_for_cli(model, backend, kernel)
        options = drafter_options(drafter, draft_model, tree_budget, None, list(option)) if drafter else None
        config = ServerConfig(api_key=api_key, max_body_bytes=max_body_bytes, max_n=max_n, max_tokens=max_tokens,
                              default_max_tokens=default_max_tokens, max_active=max_active, max_waiting=max_waiting)
        app = create_app(loaded, drafter=drafter, drafter_options=options, config=config)
        try:
            sock = listening_socket(host, port)
        except OSError as e:  # a busy port: one clear line instead of uvicorn's exit
            raise InputError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, http="h11"))
        typer.echo(f"clm serve: {loaded.name} on http://{host}:{port}/v1" + (f" with drafter {drafter}" if drafter else ""), err=True)
        server.run(sockets=[sock])


def serve_load(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    backend: str = typer.Option("auto", "--backend"),
    requests: int = typer.Option(200, "--requests", help="Total requests."),
    clients: int = typer.Option(16, "--clients", help="Concurrent clients."),
    max_tokens: int = typer.Option(16, "--max-tokens", help="max_tokens of the generation requests."),
    seconds: float = typer.Option(300.0, "--seconds", help="Stop sending new requests after this long."),
    seed: int = typer.Option(0, "--seed", help="Seeds the mix of request kinds."),
    output: Path = typer.Option(Path("docs/results/server_load.json"), "--output", "-o"),
):
    """Bounded load test on loopback: mixed, malformed and abandoned requests; 5xx count, memory."""
    from clmkit.cli import user_errors
    from clmkit.server.loadtest import run_load

    with user_errors():
        if requests < 1 or clients < 1 or max_tokens < 1 or seconds <= 0:
            raise InputError("--requests, --clients, --max-tokens must be >= 1 and --seconds > 0")
        run_load(model, backend, requests, clients, max_tokens, seconds, seed, output)


def serve_concurrency(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    backend: str = typer.Option("auto", "--backend"),
    clients: int = typer.Option(8, "--clients", help="Concurrent streaming clients (and requests in the sequential run)."),
    max_tokens: int = typer.Option(64, "--max-tokens"),
    output: Path = typer.Option(Path("docs/results/server_concurrency.json"), "--output", "-o"),
):
    """N concurrent streaming clients vs the same N requests one after another: tokens/s, TTFT p50/p95."""
    from clmkit.cli import user_errors
    from clmkit.server.loadtest import run_concurrency

    with user_errors():
        if clients < 1 or max_tokens < 1:
            raise InputError("--clients and --max-tokens must be >= 1")
        run_concurrency(model, backend, clients, max_tokens, output)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("serve")(serve)
    bench_app.command("serve-load")(serve_load)
    bench_app.command("serve-concurrency")(serve_concurrency)
