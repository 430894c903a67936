"""Every benchmark by name: `TASKS[name]()` returns its items.

Loaders are imported on first use (by "module:function" path), so listing the names costs nothing.
`load_task` also takes one CaLM task ("calm:CORR-B_correlation") or one COLD activity
("cold:baking_a_cake"), and makes sure every item says which task it came from (meta["task"]).
"""

from __future__ import annotations

import importlib
from typing import Callable

from clmkit.errors import InputError
from clmkit.tasks.base import TaskItem

AXIOMATIC_N, AXIOMATIC_SEED = 500, 0  # the generated axiomatic evaluation set (100 per setting)


def _lazy(path: str, **kwargs) -> Callable[[], list[TaskItem]]:
    module_name, _, function_name = path.partition(":")

    def load() -> list[TaskItem]:
        return getattr(importlib.import_module(module_name), function_name)(**kwargs)

    load.__name__ = f"load_{function_name}"
    load.__doc__ = f"{path}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return load


TASKS: dict[str, Callable[[], list[TaskItem]]] = {
    "cladder": _lazy("clmkit.tasks.cladder:load"),
    "calm": _lazy("clmkit.tasks.calm:load"),
    "cold": _lazy("clmkit.tasks.cold:load", split="hard"),
    "cold-full": _lazy("clmkit.tasks.cold:load", split="full"),
    "causalnet": _lazy("clmkit.tasks.causalnet:load"),
    "corr2cause": _lazy("clmkit.tasks.corr2cause:load"),
    "counterbench": _lazy("clmkit.tasks.counterbench:load"),
    "axiomatic": _lazy("clmkit.tasks.axiomatic:generate", n=AXIOMATIC_N, seed=AXIOMATIC_SEED),
    "gsm8k": _lazy("clmkit.tasks.gsm8k:load"),  # math word problems (RE2's own suite), not causal
}


def task_names() -> list[str]:
    return list(TASKS)


def load_task(name: str) -> list[TaskItem]:
    """The items of a task name; raises InputError (one clear line) for an unknown name."""
    base, _, part = name.partition(":")
    if base == "calm" and part:
        from clmkit.tasks import calm

        try:
            items = calm.load([part])
        except ValueError as e:
            raise InputError(str(e)) from None
    elif base == "cold" and part:
        from clmkit.tasks import cold

        try:
            items = cold.load("hard", [part])
        except ValueError as e:
            raise InputError(str(e)) from None
    elif name in TASKS:
        items = TASKS[name]()
    else:
        raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)} "
                         f"(or calm:<CaLM task>, cold:<activity>)")
    for item in items:
        item.meta.setdefault("task", name)
        item.meta.setdefault("answer_format", "yes/no")
    return items
