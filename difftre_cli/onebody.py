"""Independent particles on a line in an external potential (``system.kind: ideal_gas_1d``):
the system, its sampler and the config checks that differ from the periodic 3-D box.

Used by the double-well study (config=double_well; Thaler & Zavadlav, Nat. Commun. 12, 6884
(2021)). The particles do not interact, so there is no box (free space, JAX MD
``space.free()``) and no neighbour list; N particles are simply N independent copies of one
particle, integrated in parallel. Every kept snapshot therefore holds N independent samples
of the one-particle distribution, and the sampler records per-particle reference energies
(S, N) so that the observable engine can reweight each (snapshot, particle) state on its own.

Units: those of ``system.units`` (the preset: dimensionless x, energies in k_B T with kT = 1,
mass 1, time in the matching reduced unit).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import simulate as jmd_simulate
from jax_md import space

from . import units as units_mod
from .errors import UserError
from .sampler import ChunkedSampler, SamplerConfig

log = logging.getLogger("difftre")

KIND = "ideal_gas_1d"


def is_one_body_system(system_cfg) -> bool:
    return (system_cfg or {}).get("kind") == KIND


@dataclass(frozen=True)
class LineSystem:
    """``n_particles`` non-interacting particles on a line (free space).

    ``positions``: (N, 1) initial coordinates, evenly spaced on ``init_range``.
    ``box_size`` is None (no periodic box); ``volume`` is NaN (no pressure is defined).
    """

    n_particles: int
    kT: float
    mass: float
    positions: np.ndarray
    units: units_mod.UnitSystem
    species: np.ndarray
    box_size: None = None
    dimension: int = 1
    species_names: tuple = ("X",)

    @property
    def volume(self) -> float:
        return float("nan")


def build_line_system(cfg) -> LineSystem:
    unit_system = units_mod.get(cfg.get("units", "lj"))
    n = int(cfg["n_particles"])
    kT = units_mod.kT_of(unit_system, cfg.get("kT"), cfg.get("temperature"))
    lo, hi = (float(v) for v in cfg.get("init_range", (0.3, 0.7)))
    if not lo <= hi:
        raise UserError(f"system.init_range=[{lo}, {hi}] must be an interval [low, high]",
                        "set e.g. system.init_range=[0.3,0.7]")
    pos = np.linspace(lo, hi, n)[:, None] if n > 1 else np.full((1, 1), 0.5 * (lo + hi))
    return LineSystem(n_particles=n, kT=kT, mass=float(cfg.get("mass", 1.0)), positions=pos, units=unit_system,
                      species=np.zeros(n, np.int32))


def check_integrator(cfg: SamplerConfig) -> None:
    if cfg.integrator != "langevin":
        raise UserError(f"simulator.kind={cfg.integrator!r} is not available for system.kind={KIND}",
                        "use simulator=langevin (independent particles need a thermostat of their own)")


class OneBodySampler(ChunkedSampler):
    """Langevin (BAOAB, JAX MD ``nvt_langevin`` in ``space.free()``) for a one-body potential:
    the case of the sampler interface (sampler.py) without a box or neighbour lists.

    ``init(key, params) -> (state, None)``; trajectory: positions (S, N, 1), per-particle
    energies u(x_n) (S, N), kinetic kT (S,) = Σ p²/m / N, step (S,).
    """

    def __init__(self, potential, system: LineSystem, cfg: SamplerConfig):
        check_integrator(cfg)
        if not potential.one_body:
            raise UserError(f"system.kind={KIND} needs a one-body potential",
                            "use prior=harmonic_1d (or double_well) and model=spline_1d (or mlp_1d)")
        self.potential = potential
        self.system = system
        self.cfg = cfg
        _, self.shift = space.free()
        force = lambda R, params, **unused: potential.force(params, R)  # noqa: E731
        self._init, self._step = jmd_simulate.nvt_langevin(force, self.shift, cfg.dt, float(system.kT),
                                                           gamma=cfg.gamma)
        self._compile()

    def init(self, key, params, positions=None, ahead: int = 0):   # (ahead: not used)
        R = jnp.asarray(self.system.positions if positions is None else positions)
        k_state, k_mom = jax.random.split(key)
        # Maxwell momenta per particle, not centred: the particles are independent (JAX MD's
        # default initialisation removes the centre-of-mass momentum).
        p = jnp.sqrt(self.system.mass * self.system.kT) * jax.random.normal(k_mom, R.shape, R.dtype)
        state = self._init(k_state, R, mass=self.system.mass, kT=self.system.kT, momenta=p, params=params)
        return state, None

    def step_fn(self, state, params):
        """One BAOAB step (used by the direct-AD benchmark to differentiate through it)."""
        return self._step(state, params=params)

    def _advance(self, params, st, nb):
        return self._step(st, params=params), nb, jnp.asarray(False)

    def _observe(self, params, st, nb):
        return nb, jnp.asarray(False), self.potential.per_particle_energy(params, st.position)


