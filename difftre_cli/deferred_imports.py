"""Submodules of the libraries that ``import`` runs although difftre never uses them.

``import jax_md`` imports every submodule, and ``jax_md.rigid_body``'s module body runs about 120
small JAX computations (its shape tables) op by op: ~4-5 s of the ~9 s a ``difftre`` command
spends importing JAX MD on 2 CPU cores, before the first config check. difftre has no rigid
bodies, so the command line (cli.py) registers a stand-in for that submodule before JAX MD is
imported: ``from jax_md import rigid_body`` binds the stand-in, and the first attribute anyone
reads from it (``rigid_body.RigidBody``) executes the real module, puts it in its place and
answers from it — code that does use it works unchanged, and pays the cost then.

(importlib's LazyLoader cannot do this: the import system reads ``__spec__`` of a module it
finds in ``sys.modules``, which a LazyLoader module answers by loading itself.)

Also here: the probe of IPython that flax makes at import (:func:`probes_answered`) and the one
import of MDAnalysis, on first use (:func:`mdanalysis`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

#: (package, submodule) pairs the command line defers: rigid_body's shape tables; NequIP and
#: GNoME, whose e3nn-jax brings sympy and scipy.signal (3.65 -> 3.07 s of every command's imports
#: on 2 CPU cores); the UMA subpackage and jax_md.interpolate (scipy.interpolate, for EAM tables)
#: (6.0-6.2 -> 5.5-5.7 s on an AMD EPYC with 2 cores); matplotlib's pyplot and scipy.optimize,
#: which only evaluation, plots, Bessel-zero tables and 0 K fits use (``train`` of a pair or
#: three-body model never reads them)
UNUSED = (("jax_md", "rigid_body"), ("jax_md._nn", "nequip"), ("jax_md._nn", "gnome"), ("jax_md._nn", "uma"),
          ("jax_md", "interpolate"), ("matplotlib", "pyplot"), ("scipy", "optimize"))


class DeferredModule(types.ModuleType):
    """Stands in for a submodule until one of its attributes is read (module doc)."""

    def __init__(self, name: str, path: Path):
        super().__init__(name)
        self.__file__ = str(path)
        self.__spec__ = None   # nothing for the import system to load or lock

    def __getattr__(self, attr: str):   # only for attributes the stand-in lacks
        if attr.startswith("__") and attr.endswith("__") and attr != "__path__":   # a subpackage's
            raise AttributeError(attr)          # __path__: the import of one of its submodules loads it
        return getattr(load(self.__name__), attr)


def load(name: str) -> types.ModuleType:
    """Execute the real module ``name`` (deferred or not) and put it in the stand-in's place."""
    current = sys.modules.get(name)
    if current is not None and not isinstance(current, DeferredModule):
        return current
    package, _, attr = name.rpartition(".")
    spec = importlib.util.spec_from_file_location(name, current.__file__ if current is not None else
                                                  Path(importlib.util.find_spec(package).origin).parent / f"{attr}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if package in sys.modules:
        setattr(sys.modules[package], attr, module)
    return module


def defer_unused() -> None:
    """Register the stand-ins of :data:`UNUSED` (before the packages are imported; a package
    already imported or not installed is left alone)."""
    for package, attr in UNUSED:
        name = f"{package}.{attr}"
        top, *sub = package.split(".")
        if top in sys.modules or name in sys.modules:
            continue
        spec = importlib.util.find_spec(top)   # the top-level package: located, not imported
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin).parent.joinpath(*sub, f"{attr}.py")
        if not path.is_file():
            path = path.with_suffix("") / "__init__.py"   # a subpackage
        if path.is_file():
            sys.modules[name] = DeferredModule(name, path)


#: Packages that a library imports at import time only to ask whether they are running: flax.nnx
#: asks IPython whether a shell runs (to colour its reprs), ~0.2 s of every command's imports. No
#: shell runs in a process that has not imported IPython, so the answer is known without it.
PROBED = ("IPython",)


@contextlib.contextmanager
def probes_answered():
    """While the command line imports its commands, ``import`` of a :data:`PROBED` package that is
    not imported yet fails with ImportError, as if it were not installed; afterwards it imports
    normally (the real package, for whoever uses it)."""
    names = [name for name in PROBED if name not in sys.modules]
    for name in names:
        sys.modules[name] = None   # the import system's "known to be absent"
    try:
        yield
    finally:
        for name in names:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def mdanalysis():
    """MDAnalysis, imported on first use: ~1 s that a run without structure files, references or
    exported trajectories does not pay. Its AMBER module logs at import that netCDF4 is missing
    ("Writing AMBER ncdf files will be slow"); difftre writes no AMBER files, so that warning
    is not passed on to the run's log."""
    amber = logging.getLogger("MDAnalysis.coordinates.AMBER")
    level = amber.level
    amber.setLevel(logging.ERROR)
    try:
        import MDAnalysis  # heavy: imported on first use (above)
    finally:
        amber.setLevel(level)
    return MDAnalysis
