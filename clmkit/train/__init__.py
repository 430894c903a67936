"""Training draft modules for trained drafters (issue 10): one loop, one feature cache.

    data.py        self-distillation data: the target's own responses to held-out prompts
    features.py    the frozen target's final hidden states of that data, memory-mapped on disk
    loop.py        the training loop (AdamW, clipping, cosine schedule, eval, curves, resume)
    checkpoint.py  safetensors + JSON config, atomic writes, target compatibility check
    cli.py         `clm train data`, `clm train NAME`

Which module a method trains is its drafter's `module_class` (clmkit/drafters/heads.py, fspad.py, ...).
"""


def module_class(name: str):
    """The nn.Module class `clm train NAME` trains: drafter NAME's `module_class`."""
    from clmkit.drafters import DRAFTERS
    from clmkit.errors import InputError

    names = trainable()
    if name not in names:
        raise InputError(f"{name!r} is not a trained drafter; trainable: {', '.join(names)}")
    return DRAFTERS.get(name).module_class


def trainable() -> list[str]:
    from clmkit.drafters import DRAFTERS

    return [n for n in DRAFTERS.names() if getattr(DRAFTERS.get(n), "module_class", None) is not None]
