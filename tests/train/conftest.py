import json

import pytest
import torch

from clmkit.train.data import generate_batch
from clmkit.train.features import FeatureCache, build_feature_cache


@pytest.fixture(scope="session")
def tiny_cache(tiny_llama, tmp_path_factory):
    """Greedy and sampled responses of the tiny Llama to 24 random prompts, and its features."""
    folder = tmp_path_factory.mktemp("train")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 300, (int(n),), generator=g).tolist() for n in torch.randint(4, 12, (24,), generator=g)]
    rows = []
    for temp in (0.0, 0.9):
        for p, r in zip(prompts, generate_batch(tiny_llama, prompts, 40, temp, seed=0)):
            rows.append({"source": "test", "mode": str(temp), "prompt": p, "response": r})
    (folder / "distill.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return FeatureCache(build_feature_cache(tiny_llama, folder / "distill.jsonl", folder / "features", eval_fraction=0.1))


