import pytest

from tests.drafters.harness import memoised_pair


@pytest.fixture(scope="session")
def memo_pair(tiny_llama):
    """(target, self:1 draft of it), both memoised (tests/drafters/harness.PathMemo)."""
    return memoised_pair(tiny_llama)
