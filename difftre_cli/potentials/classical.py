"""Classical many-body potentials for silicon with learnable parameters, on top of JAX MD.

The energies are JAX MD's own implementations, ``jax_md.energy.stillinger_weber`` and
``jax_md.energy.edip``; this module only maps the parameter names the config uses onto their
keyword arguments, splits them into learnable and fixed ones, and validates them.
Metal units: energies in eV, lengths in Å; the remaining parameters are dimensionless.

Stillinger–Weber (Stillinger & Weber, PRB 31, 5262 (1985))::

    E = Σ_{i<j} ε A (B (r/σ)^-p − (r/σ)^-q) exp(1/(r/σ − a))
      + Σ_i Σ_{j<k} ε λ exp(γ/(r_ij/σ − a) + γ/(r_ik/σ − a)) (cos θ_jik − cos θ₀)²

JAX MD hard-codes p = 4, q = 0 and cos θ₀ = −1/3 (the silicon values); they are accepted in the
config as fixed parameters and a different value is refused. The reduced cutoff ``a`` is passed
as JAX MD's ``cutoff = a σ``, so ``a`` and ``σ`` may both be learned.

:class:`StillingerWeber` is the package's one Stillinger–Weber: these parameters and JAX MD's
implementation, used here on all pairs (or a fixed neighbour list) of a crystal cell and by the
SW prior under a graph network (sw_prior.py) on its neighbour tables, with the same kernels.

EDIP (Bazant, Kaxiras & Justo, PRB 56, 8542 (1997); Justo et al., PRB 58, 2539 (1998)): every
parameter is a keyword of ``jax_md.energy.edip``; ``a`` is its ``cutoff`` and ``Q0`` its ``Q_0``.

Differentiability: JAX MD evaluates ``(B/r)^ρ`` and ``(r/σ)^-p`` on the zero self-distance too
and masks the result with a single ``jnp.where``, so gradients with respect to B, ρ, A or λ
become 0 · ∞ = NaN. :func:`safe_displacement` moves the self-pair displacement (exactly zero)
beyond the cutoff before JAX MD sees it, the double-``where`` pattern applied from outside; the
energy is unchanged (the self pair is masked either way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
from jax_md import energy, partition, space

from ..errors import UserError

# name: (default, unit, JAX MD keyword or None when JAX MD hard-codes it)
SW_PARAMS: dict[str, tuple[float, str, str | None]] = {
    "epsilon": (2.16826, "eV", "epsilon"),
    "sigma": (2.0951, "angstrom", "sigma"),
    "a": (1.80, "1", None),            # cutoff = a * sigma (JAX MD keyword `cutoff`)
    "lam": (21.0, "1", "lam"),
    "gamma": (1.20, "1", "gamma"),
    "A": (7.049556277, "1", "A"),
    "B": (0.6022245584, "1", "B"),
    "p": (4.0, "1", None),
    "q": (0.0, "1", None),
    "cos_theta0": (-1.0 / 3.0, "1", None),
}
SW_HARD_CODED = ("p", "q", "cos_theta0")

EDIP_PARAMS: dict[str, tuple[float, str, str | None]] = {
    "A": (7.9821730, "eV", "A"),
    "B": (1.5075463, "angstrom", "B"),
    "rho": (1.2085196, "1", "rho"),
    "sigma": (0.5774108, "angstrom", "sigma"),
    "a": (3.1213820, "angstrom", "cutoff"),
    "c": (2.5609104, "angstrom", "c"),
    "alpha": (3.1083847, "1", "alpha"),
    "beta": (0.0070975, "1", "beta"),
    "lam": (1.4533108, "eV", "lam"),
    "gamma": (1.1247945, "angstrom", "gamma"),
    "eta": (0.2523244, "1", "eta"),
    "mu": (0.6966326, "1", "mu"),
    "Q0": (312.1341346, "1", "Q_0"),
    "u1": (-0.165799, "1", "u1"),
    "u2": (32.557, "1", "u2"),
    "u3": (0.286198, "1", "u3"),
    "u4": (0.66, "1", "u4"),
}
EDIP_HARD_CODED: tuple[str, ...] = ()

@dataclass(frozen=True)
class StillingerWeber:
    """Stillinger–Weber with the parameters of :data:`SW_PARAMS` (ε energy, σ length, the rest
    dimensionless; floats or tracers) evaluated by JAX MD: :meth:`energy_fn` is its all-pairs (or
    neighbour-list) energy, :meth:`pair` its two-body kernel (``energy._sw_radial_interaction``,
    p = 4, q = 0) for a caller that sums it on a graph of its own (sw_prior.py, which sums the
    three-body term by a factorised identity, cos θ₀ = −1/3 as in JAX MD)."""

    epsilon: float = SW_PARAMS["epsilon"][0]
    sigma: float = SW_PARAMS["sigma"][0]
    a: float = SW_PARAMS["a"][0]
    lam: float = SW_PARAMS["lam"][0]
    gamma: float = SW_PARAMS["gamma"][0]
    A: float = SW_PARAMS["A"][0]
    B: float = SW_PARAMS["B"][0]

    @classmethod
    def from_values(cls, values: dict) -> "StillingerWeber":
        """From a mapping of every SW parameter (config names; the hard-coded ones are ignored)."""
        return cls(**{k: values[k] for k in SW_PARAMS if k not in SW_HARD_CODED})

    @property
    def cutoff(self):
        return self.a * self.sigma

    def energy_fn(self, displacement, neighbor=None) -> Callable:
        """``E(R, **kwargs)``: JAX MD's ``stillinger_weber`` over all pairs and triplets or, with
        ``neighbor`` (a dense JAX MD list in fractional coordinates, :func:`fixed_neighbor_list`),
        ``stillinger_weber_neighbor_list`` on it."""
        kw = {"epsilon": self.epsilon, "sigma": self.sigma, "lam": self.lam, "gamma": self.gamma, "A": self.A,
              "B": self.B}
        if neighbor is None:
            return energy.stillinger_weber(displacement, cutoff=self.cutoff, **kw)
        _, e = energy.stillinger_weber_neighbor_list(displacement, 1.0, cutoff=self.cutoff, disable_cell_list=True,
                                                     fractional_coordinates=True, **kw)
        return lambda R, **kwargs: e(R, neighbor, **kwargs)

    def pair(self, r):
        """ε A φ₂(r), elementwise (a sum over directed pairs takes ½ of it)."""
        return self.epsilon * self.A * energy._sw_radial_interaction(self.sigma, self.B, self.cutoff, r)


KINDS = {"sw": (SW_PARAMS, SW_HARD_CODED), "edip": (EDIP_PARAMS, EDIP_HARD_CODED)}
#: parameters that must stay positive (lengths, energy scales, exponents that JAX MD raises to powers)
POSITIVE = {"sw": {"epsilon", "sigma", "a", "lam", "gamma", "A", "B"},
            "edip": {"A", "B", "rho", "sigma", "a", "c", "alpha", "lam", "gamma", "Q0", "u4"}}


@dataclass(frozen=True)
class ClassicalPotential:
    """A JAX MD many-body potential with named parameters.

    ``values`` holds every parameter (config names, metal units); ``learnable`` the names that
    the fit changes. :meth:`energy_fn` takes a dict of learnable values (floats or tracers).
    """

    kind: str
    values: dict
    learnable: tuple[str, ...]

    @property
    def fixed(self) -> dict:
        return {k: v for k, v in self.values.items() if k not in self.learnable}

    def units(self) -> dict:
        return {k: KINDS[self.kind][0][k][1] for k in self.values}

    def initial(self) -> dict:
        return {k: float(self.values[k]) for k in self.learnable}

    def full(self, learn: dict) -> dict:
        out = dict(self.values)
        out.update(learn)
        return out

    def cutoff(self, learn: dict | None = None):
        p = self.full(learn or {})
        return p["a"] * p["sigma"] if self.kind == "sw" else p["a"]

    def neighbor_list_ok(self) -> bool:
        """Whether a fixed neighbour list (built once, see :func:`fixed_neighbor_list`) may serve
        this potential: SW only (JAX MD's SW masks pairs beyond the cutoff itself; its EDIP list
        kernel relies on the list radius), and only while the cutoff is not learned."""
        return self.kind == "sw" and not {"a", "sigma"} & set(self.learnable)

    def energy_fn(self, displacement, learn: dict, neighbor=None) -> Callable:
        """``E(R, **kwargs)`` in eV from JAX MD, ``R`` in the displacement's coordinates.

        All pairs and all triplets (``jax_md.energy.stillinger_weber`` / ``edip``) by default;
        with ``neighbor`` (a dense JAX MD neighbour list, SW only) the list kernel
        ``stillinger_weber_neighbor_list``: N·K² instead of N³ triplets for supercells."""
        p = self.full(learn)
        d = safe_displacement(displacement, self.cutoff(learn))
        if self.kind == "sw":
            if neighbor is not None and not self.neighbor_list_ok():
                raise ValueError("a fixed neighbour list needs SW with a fixed cutoff")
            return StillingerWeber.from_values(p).energy_fn(d, neighbor)
        kw = {v[2]: p[k] for k, v in EDIP_PARAMS.items()}
        return energy.edip(d, **kw)


def safe_displacement(displacement, cutoff):
    """Wrap a JAX MD displacement so that a zero displacement (an atom with itself) reads as
    2·cutoff along x: outside every cutoff, so masked terms stay finite under autodiff."""
    def d(Ra, Rb, **kwargs):
        dR = displacement(Ra, Rb, **kwargs)
        self_pair = jnp.sum(dR * dR) == 0
        far = jnp.zeros_like(dR).at[0].set(2.0 * cutoff)
        return jnp.where(self_pair, dR + far, dR)
    return d


def fixed_neighbor_list(potential: "ClassicalPotential", frac, cell, skin: float = 0.5):
    """A dense JAX MD neighbour list of radius cutoff + ``skin`` (Å) for the crystal ``frac`` in
    ``cell`` (fractional coordinates, columns of ``cell`` are lattice vectors), built once outside
    jit. It stays valid while no atom moves by more than skin/2 (relaxations of a crystal, small
    strains). Cell-list free: every pair is tested once, which suits cells of a few hundred atoms."""
    disp, _ = space.periodic_general(jnp.asarray(cell), fractional_coordinates=True)
    fn = partition.neighbor_list(disp, jnp.asarray(cell), float(potential.cutoff()), dr_threshold=skin,
                                 fractional_coordinates=True, disable_cell_list=True,
                                 format=partition.NeighborListFormat.Dense)
    return fn.allocate(jnp.asarray(frac))


def build_classical(cfg) -> ClassicalPotential:
    """From the ``classical`` group: ``kind`` (sw | edip), ``params`` (name: value, overriding the
    published defaults), ``learnable`` (list of names)."""
    if cfg is None:
        raise UserError("config group 'classical' is missing for trainer=static", "select one, e.g. classical=sw")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise UserError(f"classical.kind: unknown potential {kind!r}", f"use one of {sorted(KINDS)}")
    table, hard = KINDS[kind]
    values = {k: v[0] for k, v in table.items()}
    given = dict(cfg.get("params") or {})
    for k, v in given.items():
        if k not in table:
            raise UserError(f"classical.params.{k}: {kind} has no parameter {k!r}",
                            f"use the names {', '.join(table)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"classical.params.{k} must be a number, got {v!r}", f"set classical.params.{k}={table[k][0]}")
        values[k] = float(v)
    for k in hard:
        if abs(values[k] - table[k][0]) > 1e-6:
            raise UserError(f"classical.params.{k}={values[k]}: JAX MD's {kind} potential hard-codes "
                            f"{k} = {table[k][0]:.6g}", f"remove classical.params.{k} or set it to {table[k][0]:.6g}")
    for k in POSITIVE[kind]:
        if not values[k] > 0:
            raise UserError(f"classical.params.{k} must be > 0, got {values[k]}", f"set classical.params.{k}={table[k][0]}")
    learnable = list(cfg.get("learnable") or [])
    if not learnable:
        raise UserError("classical.learnable is empty: nothing to fit", "list parameters, e.g. classical.learnable=[epsilon,lam]")
    for k in learnable:
        if k not in table:
            raise UserError(f"classical.learnable: {kind} has no parameter {k!r}", f"use names from {', '.join(table)}")
        if k in hard:
            raise UserError(f"classical.learnable: {k} is hard-coded in JAX MD's {kind} and cannot be learned",
                            f"learn a subset of {', '.join(n for n in table if n not in hard)}")
        if values[k] == 0:
            raise UserError(f"classical.learnable: {k} starts at 0; the fit scales parameters by their start values",
                            f"give classical.params.{k} a non-zero start value")
    if len(set(learnable)) != len(learnable):
        raise UserError(f"classical.learnable lists a parameter twice: {learnable}", "list each parameter once")
    return ClassicalPotential(kind, values, tuple(learnable))
