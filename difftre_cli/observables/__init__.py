"""Observables: per-snapshot quantities whose reweighted averages are compared with targets.

An observable is a small frozen dataclass derived from :class:`.base.Observable`, which
declares every optional part below with its default (callers read them; nothing is probed) and
has

- ``name``, ``unit_kind`` and ``grid`` (None for scalars),
- ``depends_on_params``: False if the snapshot value is fixed by the positions alone (then it
  is computed once per reference trajectory, not once per update),
- ``snapshot(ctx, quantities) -> value`` with ``quantities`` the per-snapshot inputs
  (pair systems: ``r`` distances (N, M) on a dense neighbour list, +inf for padding, ``R``
  positions (N, 3), ``idx`` that list (N, M) padded with N, ``box`` the cubic box side;
  one-body systems: coordinates ``x``; for θ-dependent observables ``energy`` and ``virial``),
- ``reach`` (pair systems, θ-independent; default 0): the neighbour-list cutoff the observable
  needs; ``pair`` (default None): the species pair of a partial RDF;
- ``check_box(box)``: raises a UserError if the observable cannot work in a cubic box of that
  side (run by config validation; by default: a reach beyond half the box; e.g. S(k) bins
  without a wave vector).

Optional, for θ-dependent observables of mechanics (the engine, engine.py, computes them):

- ``needs`` (default ()): per-snapshot strain derivatives the engine must add to ``quantities``, from
  ``born_stress`` ((6,) σ^B = (1/Ω) ∂U_θ/∂e) and ``born_stiffness`` ((6, 6) C^B = (1/Ω)
  ∂²U_θ/∂e∂e), e the Voigt Lagrangian strain at 0 (observables/mechanical.py); they need a
  potential that declares ``takes_strain`` (the many-body ones; potentials/protocol.py);
- ``combine(ctx, averages) -> value`` (default None): the observable is a function of averages rather than
  an average. ``snapshot`` then returns a pytree of per-snapshot pieces, the engine reweights
  every leaf separately and ``combine`` maps the averages to the value (e.g. the
  stress-fluctuation stiffness from ⟨C^B⟩, ⟨σ^B⟩, ⟨σ^B σ^B⟩); without it the value is the
  average of ``snapshot``;
- ``components`` (default None): names of the entries of a vector value (a target may then give ``value`` as a
  mapping name → number, a list, or one number for all).

The registry :data:`OBSERVABLES` maps the ``kind`` used in ``observables/*.yaml`` to the class
(``from_config(name, cfg)`` builds it); it is collected from the ``KINDS`` mapping of every module
of this package, so adding an observable is one module and one YAML.
:mod:`.engine` computes them from trajectories (featurize once, reweight per parameter set).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ..checks import mapping
from ..errors import UserError


@dataclass(frozen=True)
class Context:
    """What an observable may need to know about the system (units of the system)."""

    n_particles: int
    volume: float
    kT: float
    species_names: tuple = ("X",)
    counts: tuple = ()                 # particles per species (same order as species_names)
    species: Any = field(default=None, repr=False, compare=False)   # (N,) int, None for one species
    # a molecule's topology (bonds (B, 2), angles (A, 3), dihedrals (D, 4) 0-based bead index
    # arrays; molecule/topology.py), read by the internal-coordinate observables' ``all``; None: none
    topology: Any = field(default=None, repr=False, compare=False)

    def species_index(self, name: str, key: str) -> int:
        if name not in self.species_names:
            raise UserError(f"{key}: no species {name!r} in the system (species: {list(self.species_names)})",
                            "name species as in system.species")
        return self.species_names.index(name)


def _collect() -> dict:
    """kind -> observable class, from the ``KINDS`` of every module of this package: a new
    observable is one module (with its ``KINDS``) and one ``observables/*.yaml``."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for kind, cls in vars(module).get("KINDS", {}).items():
            if kind in found:
                raise RuntimeError(f"observable kind {kind!r} defined twice ({found[kind]} and {cls})")
            found[kind] = cls
    return found


OBSERVABLES = _collect()


def build(cfg) -> dict:
    """Observables from the ``observables`` config group: a mapping name -> settings with ``kind``."""
    out = {}
    for name, sub in (cfg or {}).items():
        mapping(sub, f"observables.{name}", f"observables.{name}={{kind: rdf, r_max: 3.0, n_bins: 150}}")
        kind = sub.get("kind", name)
        if kind not in OBSERVABLES:
            raise UserError(f"observables.{name}.kind: unknown observable {kind!r}",
                            f"use one of {sorted(OBSERVABLES)}")
        out[name] = OBSERVABLES[kind].from_config(name, sub)
    if not out:
        raise UserError("no observables configured", "select an observables group, e.g. observables=rdf")
    return out
