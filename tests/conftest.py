"""Shared fixtures."""
from __future__ import annotations

import contextlib

import pytest


@contextlib.contextmanager
def _x64(enabled: bool):
    import jax
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def single_precision():
    """Run a test in float32 (the default precision) and restore the previous x64 setting."""
    with _x64(False):
        yield


@pytest.fixture
def double_precision():
    """Run a test in float64 (finite differences need it) and restore the previous x64 setting."""
    with _x64(True):
        yield


def difftre_train_cmd(args) -> list[str]:
    """The console script (or its module) running `difftre train ARGS`."""
    import shutil
    import sys
    exe = shutil.which("difftre")
    return ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + ["train", *args]


def cli_env() -> dict:
    """The environment of a CLI subprocess: CPU JAX, Hydra's short errors."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return env
