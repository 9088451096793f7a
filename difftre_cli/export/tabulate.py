"""A pair function u(r) on a grid for an MD engine's table: energies, forces −du/dr of the
function itself (automatic differentiation, not differences of the table), and an inner wall.

Below the distances the model was trained on, a learned pair function is not trustworthy (a
spline below its first knot adds no force, an MLP extrapolates anything), but an engine may
still meet such distances in a rare collision or in the first steps from a bad start. The
table therefore follows the model from the cutoff inward to ``r_inner`` — where u first
climbs to ``wall`` kT inside its minimum (a soft model that never does: where its repulsion is
strongest) — and
continues it below by a quadratic wall that keeps u, the force and its slope continuous:

    u(r) = u_i + f_i (r_i − r) + ½ k (r_i − r)²,   f(r) = f_i + k (r_i − r),   k = max(u''(r_i), 0)

so the force only grows inward (no zero-force hole to fall into). The outer end is the model's
own: the table ends at the cutoff with whatever u(rc) the model has there (zero for the
shifted priors and splines), as the engine's truncation does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError

#: default height of the inner end, in kT: a pair is never closer than this in equilibrium (e^-30)
WALL_KT = 30.0
#: the inward scan for r_inner starts at this fraction of the cutoff
SCAN_FLOOR = 0.05


@dataclass(frozen=True)
class PairTable:
    """One pair function on a grid, in the system's units: ``r`` ascending, ``u`` energies,
    ``f`` = −du/dr; ``r_inner`` the start of the model (below: the wall), ``u_cut`` the model's
    value at ``cutoff`` (beyond which the engine sets u = 0)."""

    name: str                     # "A-B"; "X-X" for one species
    species: tuple[str, str]
    r: np.ndarray
    u: np.ndarray
    f: np.ndarray
    r_inner: float
    cutoff: float
    u_cut: float

    def scaled(self, length: float, energy: float) -> "PairTable":
        """The same table in other units: lengths × ``length``, energies × ``energy``."""
        return PairTable(self.name, self.species, self.r * length, self.u * energy, self.f * energy / length,
                         self.r_inner * length, self.cutoff * length, self.u_cut * energy)


def derivatives(u_fn: Callable) -> Callable:
    """(u, −u', u'') of an elementwise pair function ``u_fn(r)`` at the points ``r`` (float64,
    one compiled program: op-by-op second derivatives of a spline take seconds per call)."""
    def scalar(x):
        return u_fn(jnp.reshape(x, (1,)))[0]

    du = jax.grad(scalar)
    d2u = jax.grad(du)
    all_three = jax.jit(lambda x: (jax.vmap(scalar)(x), -jax.vmap(du)(x), jax.vmap(d2u)(x)))

    def fn(r):
        with jax.enable_x64(True):
            out = all_three(jnp.asarray(np.asarray(r, np.float64)))
            return tuple(np.asarray(v, np.float64) for v in out)
    return fn


def inner_end(u_fn: Callable, cutoff: float, kT: float, wall: float = WALL_KT, points: int = 20000) -> float:
    """The distance where the table stops following the model (module docstring): inward from
    the minimum of u, the last point before u first reaches ``wall`` kT (or stops being finite);
    a soft model that never gets there ends where its repulsion is strongest."""
    r = np.linspace(SCAN_FLOOR * cutoff, cutoff, points)
    u, f, _ = derivatives(u_fn)(r)
    ok = np.isfinite(u) & np.isfinite(f)
    if not np.any(ok):
        raise UserError("the pair function is not finite anywhere below the cutoff", "check the run's parameters")
    i_min = int(np.argmin(np.where(ok, u, np.inf)))
    core = slice(0, i_min + 1)
    hit = np.flatnonzero(~ok[core] | (np.where(ok, u, np.inf)[core] >= wall * kT))
    if hit.size:
        best = int(hit[-1]) + (0 if ok[hit[-1]] else 1)
    else:   # never as high as the wall: the strongest repulsion inside the minimum
        best = int(np.argmax(np.where(ok, f, -np.inf)[core]))
    if not f[best] > 0.0:
        raise UserError(f"the pair function is not repulsive at its inner end r = {r[best]:.4g} "
                        f"(force {f[best]:.3g}): a table there would let particles collapse",
                        "give the model a repulsive prior (prior=repulsive), or set r_inner= where it repels")
    return float(r[best])


def tabulate(u_fn: Callable, name: str, species: tuple[str, str], r, cutoff: float, r_inner: float) -> PairTable:
    """``u_fn`` at the ascending points ``r`` (≤ ``cutoff``): the model from ``r_inner`` on, the
    quadratic wall below it (module docstring)."""
    r = np.asarray(r, np.float64)
    if not 0.0 <= r[0] < r_inner < cutoff:
        raise UserError(f"r_inner={r_inner:.4g} must lie between the table's start {r[0]:.4g} and the cutoff "
                        f"{cutoff:.4g}", "choose r_inner inside the range the model was trained on")
    model = r >= r_inner
    u, f, d2 = derivatives(u_fn)(np.concatenate([[r_inner, cutoff], np.where(model, r, r_inner)]))   # one call
    (u_i, u_cut), f_i, k = u[:2], f[0], max(float(d2[0]), 0.0)
    u, f = u[2:], f[2:]
    d = r_inner - r
    u = np.where(model, u, u_i + f_i * d + 0.5 * k * d * d)
    f = np.where(model, f, f_i + k * d)
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(f))):
        bad = r[~(np.isfinite(u) & np.isfinite(f))]
        raise UserError(f"pair {name}: the model is not finite at r = {bad[0]:.4g}", "set r_inner= above that distance")
    return PairTable(name, species, r, u, f, float(r_inner), float(cutoff), float(u_cut))
