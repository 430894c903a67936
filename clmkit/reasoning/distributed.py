"""Past one machine: fan an evaluation's items out over a Ray cluster.

    executor = ray_executor(ModelSpec("smollm2-135m"), "cot", address="auto", workers=16)
    run(items, None, "cot", path, executor=executor, model_name="smollm2-135m")

Each worker is a Ray actor that builds a model once (from a `ModelSpec`, not a pickled model:
weights are loaded where they are used, and kept for the actor's life) and then answers chunks of
items; the actors themselves are kept for later runs in the same process, since starting a Ray
worker process costs seconds. With `batch_size` > 1
a chunk is decoded as one batch inside the worker (reasoning/batch.py). The driver receives the
records as chunks finish and `run` appends them to the same resumable JSONL as a serial run, so
an interrupted cluster run resumes from the file like any other. Items are answered by the same
`run_item`, so the records equal the serial run's (tests/reasoning/test_distributed.py).

`address`: None or "local" starts a Ray instance on this machine; "auto" joins the cluster this
machine is part of; "ray://HOST:10001" connects a Ray client to a remote head node. Ray is the
optional extra `clmkit[ray]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from clmkit.errors import InputError
from clmkit.tasks.base import TaskItem


@dataclass(frozen=True)
class ModelSpec:
    """What `make_model` needs to build the model inside a worker."""

    name: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    drafter: str | None = None
    backend: str = "torch"

    def build(self):
        from clmkit.reasoning.lm import make_model

        return make_model(self.name, base_url=self.base_url, api_key_env=self.api_key_env, timeout=self.timeout,
                          drafter=self.drafter, backend=self.backend)


class EvalWorker:
    """One Ray actor: its models, each built on first use and kept."""

    def __init__(self):
        self.models: dict[ModelSpec, object] = {}

    def run(self, spec: ModelSpec, strategy: str, batch_size: int, items: list[TaskItem]) -> list[dict]:
        from clmkit.reasoning.evaluate import batched

        if strategy == "solver":  # the exact engine reads the text itself: no model to load
            model = None
        elif spec in self.models:
            model = self.models[spec]
        else:
            model = self.models[spec] = spec.build()
        return list(batched(model, strategy, batch_size)(items))


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'clmkit[ray]' (ray==2.60.0)") from None
    return ray


def connect(address: str | None) -> None:
    """Join (or start) the cluster unless this process already has; a bad address is one clear line."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address in (None, "", "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot connect to the Ray cluster at {address!r}: {e}") from None


_actors: dict = {"job": None, "actors": []}  # kept between runs of one Ray session (a worker costs seconds)


def actors(count: int, cpus_per_worker: float) -> list:
    ray = _ray()
    job = ray.get_runtime_context().get_job_id()
    if _actors["job"] != job:  # a new session (ray.shutdown, init again): the old handles are dead
        _actors.update(job=job, actors=[])
    kept = _actors["actors"]
    if len(kept) < count:
        actor = ray.remote(num_cpus=cpus_per_worker)(EvalWorker)
        kept += [actor.remote() for _ in range(count - len(kept))]
    return kept[:count]


def ray_executor(spec: ModelSpec, strategy: str, *, address: str | None = None, workers: int | None = None,
                 batch_size: int = 1, cpus_per_worker: float = 1.0):
    """An `evaluate.run` executor: items in chunks of `batch_size` over `workers` actors."""
    if workers is not None and workers < 1:
        raise InputError(f"--ray-workers must be >= 1, got {workers}")

    def execute(items: list[TaskItem]) -> Iterator[dict]:
        if not items:
            return
        ray = _ray()
        from ray.util import ActorPool

        connect(address)
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
        chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        pool = ActorPool(actors(min(count, len(chunks)), cpus_per_worker))
        for records in pool.map_unordered(lambda a, chunk: a.run.remote(spec, strategy, batch_size, chunk), chunks):
            yield from records

    return execute
