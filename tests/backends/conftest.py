import pytest


@pytest.fixture(scope="session")
def llama_model():
    """The embedded model (SmolLM2-135M Q4_1 GGUF, as shipped) on the llama.cpp backend."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup installs it)")
    from clmkit.models import load

    return load("smollm2-135m", backend="llama.cpp", n_ctx=4096, n_seq_max=64)
