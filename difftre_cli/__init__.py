"""difftre: learn interaction potentials top-down from observables with DiffTRe.

``from difftre_cli import load_run`` loads a trained run in Python (trained_run.py). The import
of the package itself stays cheap (no JAX): ``load_run`` is imported when it is first read.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["TrainedRun", "__version__", "load_run"]

#: names this package exports lazily, and the module that defines them
_LAZY = {"load_run": "trained_run", "TrainedRun": "trained_run"}


def __getattr__(name: str):
    """PEP 562: import the module of a lazy name on first access (module doc)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
