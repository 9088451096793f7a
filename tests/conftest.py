"""Shared fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture
def single_precision():
    """Run a test in float32 (the default precision) and restore the previous x64 setting."""
    import jax
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", old)
