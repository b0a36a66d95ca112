"""Tiny Stable Diffusion models for the tests: the builder lives in :mod:`lib_dbchar.demo.tiny`.

The demo ships the builder (the product must not import from tests/); this module re-exports it
and adds the session fixtures. Nothing heavy is imported at module level: tests/conftest.py
star-imports this module.
"""

from __future__ import annotations

import pytest

from lib_dbchar.demo.tiny import TINY_PROMPT, TinyModel, build_tiny_sd

__all__ = ["TINY_PROMPT", "TinyModel", "build_tiny_sd", "tiny_sd1", "tiny_sd2"]


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny SD1 model (epsilon prediction), built once per test session."""
    return build_tiny_sd("sd1", tmp_path_factory.mktemp("tiny-sd1"), seed=1)


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny SD2 model with v-prediction (like SD2.x-768), built once per test session."""
    return build_tiny_sd("sd2", tmp_path_factory.mktemp("tiny-sd2"), seed=2)
