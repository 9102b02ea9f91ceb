"""Fixtures for every test in the repository, lorapipe's and the contrib packages'."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A failed GGML_ASSERT in llama.cpp forks gdb for a backtrace, which hangs the test run
# instead of failing it; set before any test loads llama.cpp (subprocesses inherit it).
os.environ.setdefault("GGML_NO_BACKTRACE", "1")


@pytest.fixture(scope="session", autouse=True)
def lorapipe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep tests from writing to ~/.cache; subprocesses inherit the variable."""
    cache = tmp_path_factory.mktemp("lorapipe-cache")
    previous = os.environ.get("LORAPIPE_CACHE")
    os.environ["LORAPIPE_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LORAPIPE_CACHE", None)
    else:
        os.environ["LORAPIPE_CACHE"] = previous
