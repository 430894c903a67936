"""clmkit: a toolkit for causal language models.

    from clmkit import load, Engine
    engine = Engine(load("smollm2-135m"))
    for chunk in engine.generate("Why is the sky blue?"):
        print(chunk.text, end="")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "Engine", "Sampling", "Completion", "Chunk"]


def __getattr__(name: str):
    # Lazy: `clmkit.causal` and the CLI's --help should not pay for importing torch/transformers.
    if name == "load":
        from clmkit.models import load

        return load
    if name in ("Engine", "Completion", "Chunk"):
        from clmkit import engine

        return getattr(engine, name)
    if name == "Sampling":
        from clmkit.sampling import Sampling

        return Sampling
    raise AttributeError(name)
