"""`clm serve`: an OpenAI-compatible HTTP server over clmkit's engine (FastAPI + uvicorn).

    app.py       endpoints, validation, SSE, auth, body limit; `create_app`, `running`
    schemas.py   OpenAI request/response bodies (pydantic) and `ApiError`
    queue.py     the engine thread: waiting queue -> active sequences -> one step each
    logprobs.py  per-token log-probabilities for `logprobs` / `top_logprobs`
    metrics.py   Prometheus text for /metrics
    loadtest.py  the load test and the concurrency benchmark
    cli.py       `clm serve`, `clm bench serve-load`, `clm bench serve-concurrency`
"""
