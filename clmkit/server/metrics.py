"""Server counters, rendered in the Prometheus text exposition format (version 0.0.4) for /metrics.

Counters are written by the engine thread and the request handlers; a lock keeps each update and
each rendering consistent.
"""

from __future__ import annotations

import threading
import time
from collections import deque

TOKENS_PER_S_WINDOW_S = 10.0  # tokens/s is measured over this trailing window


class Metrics:
    def __init__(self, model_name: str):
        self.model = model_name
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, HTTP status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.engine_steps = 0  # scheduler ticks over sequences: one engine step of one sequence each
        self.target_forwards = 0  # decode steps of finished sequences (speculative: tokens / forward)
        self.step_tokens = 0
        self.cancelled = 0
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step, last window only
        self.queue_depth = lambda: 0  # set by the scheduler
        self.active = lambda: 0

    def request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def step(self, new_tokens: int, first: bool, ttft_s: float) -> None:
        now = time.monotonic()
        with self.lock:
            self.engine_steps += 1
            self.generated_tokens += new_tokens
            self.recent.append((now, new_tokens))
            if first:
                self.ttft_sum += ttft_s
                self.ttft_count += 1

    def finished(self, prompt_tokens: int, target_forwards: int, step_tokens: int, cancelled: bool) -> None:
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.target_forwards += target_forwards
            self.step_tokens += step_tokens
            self.cancelled += cancelled

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - TOKENS_PER_S_WINDOW_S:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / TOKENS_PER_S_WINDOW_S

    def render(self) -> str:
        with self.lock:
            label = f'model="{self.model}"'
            lines = ["# HELP clm_requests_total HTTP requests by endpoint and status.", "# TYPE clm_requests_total counter"]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'clm_requests_total{{{label},endpoint="{endpoint}",status="{status}"}} {count}')
            mean_accepted = self.step_tokens / self.target_forwards if self.target_forwards else 0.0
            for name, kind, help_, value in (
                ("clm_prompt_tokens_total", "counter", "Prompt tokens of finished sequences.", self.prompt_tokens),
                ("clm_generation_tokens_total", "counter", "Tokens generated.", self.generated_tokens),
                ("clm_engine_steps_total", "counter", "Engine steps (one sequence advanced by one step each).", self.engine_steps),
                ("clm_cancelled_sequences_total", "counter", "Sequences stopped because their client went away.", self.cancelled),
                ("clm_tokens_per_second", "gauge", f"Tokens generated per second over the last {TOKENS_PER_S_WINDOW_S:g} s.", self.tokens_per_s()),
                ("clm_mean_accepted_tokens_per_step", "gauge", "Tokens committed per target forward (1 without a drafter).", mean_accepted),
                ("clm_queue_depth", "gauge", "Sequences waiting for the engine.", self.queue_depth()),
                ("clm_active_sequences", "gauge", "Sequences the engine is decoding.", self.active()),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {value}"]
            lines += ["# HELP clm_time_to_first_token_seconds Time from admission to the first token.",
                      "# TYPE clm_time_to_first_token_seconds summary",
                      f"clm_time_to_first_token_seconds_sum{{{label}}} {self.ttft_sum:g}",
                      f"clm_time_to_first_token_seconds_count{{{label}}} {self.ttft_count}"]
            return "\n".join(lines) + "\n"
