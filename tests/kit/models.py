"""Tiny Stable Diffusion models for the tests: the builder lives in :mod:`lib_dbchar.demo.tiny`.

The demo ships the builder (the product must not import from tests/); this module re-exports it
and adds the session fixtures. Nothing heavy is imported at module level: tests/conftest.py
star-imports this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from lib_dbchar.demo.tiny import TINY_PROMPT, TinyModel, build_tiny_sd

__all__ = [
    "TINY_PROMPT",
    "TinyModel",
    "build_tiny_sd",
    "one_torch_thread",
    "tiny_sd1",
    "tiny_sd2",
    "torch_threads",
]


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny SD1 model (epsilon prediction), built once per test session."""
    return build_tiny_sd("sd1", tmp_path_factory.mktemp("tiny-sd1"), seed=1)


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny SD2 model with v-prediction (like SD2.x-768), built once per test session."""
    return build_tiny_sd("sd2", tmp_path_factory.mktemp("tiny-sd2"), seed=2)


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block, then restore the previous number.

    Tiny models gain nothing from threads, and on a loaded machine OpenMP waits dominate their
    run time. For module-scoped fixtures, which run before any function fixture.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The test runs torch on one thread (see :func:`torch_threads`)."""
    with torch_threads(1):
        yield
