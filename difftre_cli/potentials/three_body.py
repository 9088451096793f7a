"""A learnable many-body model of Stillinger–Weber form that is cheap on a CPU (``model.kind=three_body``).

    U_θ = ½ Σ_{i≠j} [ ε A_ab (B_ab (r_ij/σ)^-4 − 1) exp(1/(r_ij/σ − a)) + s_ab(r_ij) ]
        + ½ Σ_j Σ_{i≠k} ε λ_{c,ab} g_ji g_jk h_{c,ab}(cos θ_ijk)
    g_ji = exp(γ_ab / (r_ji/σ − a))  (0 beyond a σ),   h(c) = Σ_l b_l P_l(c)  (Legendre)

with the species a, b of the bond (or of the two neighbours i, k of the centre j, whose species
is c). The first line is SW's pair term plus a learnable cubic spline s(r) on [r_min, cutoff]
(base.SplinePair's, zero at the cutoff with zero slope); the second SW's three-body term whose
angular part (cos θ + 1/3)² is a Legendre series of degree ``angle_degree`` whose coefficients
are learned (initialised to (cos θ − cos θ₀)²: b₀ = 1/3 + cos²θ₀, b₁ = −2 cos θ₀, b₂ = 2/3).
With ``angle_degree`` 2, no spline and SW's parameters it is JAX MD's ``stillinger_weber``
(tests/test_three_body.py), so it is also a learnable Stillinger–Weber at finite temperature:
``learn`` names the learned parts (A, B, lam, gamma, angle, pair, epsilon); the others keep their
config values. Positive ones (ε, B, γ) are learned as logarithms. σ and a set the range a σ and
stay fixed (a σ ≤ ``cutoff``).

No triplet list. The three-body sum around a centre j needs only j's own neighbour slots a, b:
with the power series h(c) = Σ_n β_n cⁿ (β from the Legendre coefficients) and the unit
bond vectors u_a, (u_a·u_b)ⁿ = Σ_{x+y+z=n} w u_a^xyz u_b^xyz (multinomial weights w), so

    Σ_{a≠b} g_a g_b h(u_a·u_b) = Σ_n β_n Σ_{xyz} w (T_xyz² − Σ_a g_a² (u_a^xyz)²),   T_xyz = Σ_a g_a u_a^xyz

(per neighbour species, for species-dependent h). That is (L+1)(L+2)(L+3)/6 monomials per
neighbour slot (35 for L = 4) instead of a sum over slot pairs (:func:`angular_sum`, which the SW
prior of :mod:`.sw_prior` shares), computed on the dense neighbour
list with no capacities to fit: :mod:`.manybody` hosts it with ``graph_format`` dense
(``graph_free``), with the same engine hooks as DimeNet++ (strain for the virial and the Born
terms, the SW prior of :mod:`.sw_prior`). Water (N = 901, cutoff 0.5 nm): see
scripts/bench/README.md.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre as legendre_poly

from ..checks import mapping, number
from ..errors import UserError
from ..neighbors import minimum_image
from .base import cubic_uniform, spline_second_derivative_map

#: the learnable parts; positive ones are stored as logarithms
PARTS = ("epsilon", "A", "B", "lam", "gamma", "angle", "pair")
LOG_PARTS = ("epsilon", "B", "gamma")
DEFAULT_LEARN = ("A", "B", "lam", "gamma", "angle", "pair")
KEYS = ("kind", "cutoff", "n_species", "sigma", "a", "epsilon", "A", "B", "lam", "gamma", "cos_theta0",
        "angle", "angle_degree", "pair_knots", "pair_r_min", "pair_values", "learn")


def legendre(c, degree: int):
    """P_0(c) … P_degree(c) stacked on a new last axis (Bonnet's recursion)."""
    p = [jnp.ones_like(c), c]
    for n in range(1, degree):
        p.append(((2 * n + 1) * c * p[n] - n * p[n - 1]) / (n + 1))
    return jnp.stack(p[: degree + 1], -1)


def sw_angle_coefficients(cos_theta0: float, degree: int) -> np.ndarray:
    """Legendre coefficients of (c − cos θ₀)² (degree ≥ 2; higher ones 0)."""
    b = np.zeros(degree + 1)
    b[:3] = (1.0 / 3.0 + cos_theta0 ** 2, -2.0 * cos_theta0, 2.0 / 3.0)
    return b


def _monomial_order(degree: int, x, y, z, one):
    """The monomials of degree ≤ ``degree`` in the order M_n = (x·M_{n−1}, y·(the last n of
    M_{n−1}: no x), z·z^{n−1}), built from x, y, z by products and contiguous slices only (their
    derivatives need no scatter); ``one`` is the degree-0 monomial. Returns the concatenation."""
    levels = [[one]]
    for n in range(1, degree + 1):
        prev = levels[-1]
        levels.append([x * m for m in prev] + [y * m for m in prev[-n:]] + [z * prev[-1]])
    return [m for level in levels for m in level]


@functools.lru_cache(maxsize=None)
def _monomial_table(degree: int):
    """Exponents (C, 3), multinomial weights (C,) and degrees (C,) of the monomials
    x^a y^b z^c, a + b + c = n ≤ ``degree``, in :func:`_monomial_order`:
    (u·v)^n = Σ_{a+b+c=n} w u^abc v^abc."""
    exps = np.asarray(_monomial_order(degree, *(_Exponents(e) for e in np.eye(3, dtype=int)), _Exponents((0, 0, 0))),
                      np.int32)
    weights = np.asarray([math.factorial(a + b + c) / (math.factorial(a) * math.factorial(b) * math.factorial(c))
                          for a, b, c in exps])
    return exps, weights, exps.sum(1).astype(np.int32)


class _Exponents(tuple):
    """Exponents (a, b, c) of x^a y^b z^c; the product of two monomials adds them."""

    def __new__(cls, abc):
        return super().__new__(cls, (int(v) for v in abc))

    def __mul__(self, other):
        return _Exponents(p + q for p, q in zip(self, other))


def monomials(u, degree: int):
    """The monomials of :func:`_monomial_table` of unit vectors u (..., 3): (..., C)."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    return jnp.stack(_monomial_order(degree, x, y, z, jnp.ones_like(x)), -1)


@functools.lru_cache(maxsize=None)
def _legendre_to_power(degree: int) -> np.ndarray:
    """Q (L + 1, L + 1) with P_l(c) = Σ_n Q[l, n] cⁿ."""
    q = np.zeros((degree + 1, degree + 1))
    for ell in range(degree + 1):
        q[ell, :ell + 1] = legendre_poly.leg2poly(np.eye(degree + 1)[ell][:ell + 1])
    return q


def monomial_coefficients(power, degree: int):
    """w_c β_{n(c)} per monomial c of degree n(c) ≤ ``degree`` (:func:`_monomial_table`), for the
    power series h(c) = Σ_n β_n cⁿ with coefficients ``power`` (..., degree + 1): (..., C)."""
    _, wt, deg = _monomial_table(degree)
    return power[..., deg] * jnp.asarray(wt, power.dtype)


def angular_sum(g, mono, onehot, coef):
    """Σ_{a≠b} g_a g_b h_{s_a s_b}(u_a·u_b) per centre, without forming the slot pairs.

    ``g`` (N, M) radial factors (0 on empty slots), ``mono`` (N, M, C) the monomials of the bond
    vectors u_a (:func:`monomials`), ``onehot`` (N, M, S) the neighbour species, ``coef``
    (N, S, S, C) the angular functions h_st per centre as :func:`monomial_coefficients`. With
    T_sc = Σ_a g_a [s_a = s] u_a^c the sum over all ordered slot pairs is Σ_stc coef_stc T_sc T_tc;
    the diagonal a = b is subtracted with the slot's own monomials, so that it is exact also for
    vectors that are not of unit length (JAX MD's cosine divides by r + 1e-7). Returns (N,)."""
    t = jnp.einsum("nm,nms,nmc->nsc", g, onehot, mono)                       # (N, S, C)
    full = jnp.einsum("nsc,ntc,nstc->n", t, t, coef)
    same = jnp.moveaxis(jnp.diagonal(coef, 0, 1, 2), -1, 1)                 # (N, S, C): h_ss
    own = jnp.einsum("nms,nsc->nmc", onehot, same)                           # (N, M, C): h_{s_a s_a}
    return full - jnp.sum(g * g * jnp.sum(own * mono * mono, -1), -1)


def _pair_index(n_species: int) -> np.ndarray:
    """(S, S) symmetric table of unordered species pairs 0 … S(S+1)/2 − 1."""
    t = np.zeros((n_species, n_species), np.int32)
    p = 0
    for a in range(n_species):
        for b in range(a, n_species):
            t[a, b] = t[b, a] = p
            p += 1
    return t


@dataclass(frozen=True)
class ThreeBodyModel:
    """SW-form pair + three-body model on the dense neighbour list (module docstring)."""

    graph_free = True   # manybody: no edge/triplet graph, no capacities (graph_format dense)

    cutoff: float
    sigma: float
    a: float = 1.8
    n_species: int = 1
    epsilon: float = 1.0
    A: float = 0.0
    B: float = 0.6022245584
    lam: float = 0.0
    gamma: float = 1.2
    cos_theta0: float = -1.0 / 3.0
    angle_degree: int = 4
    pair_knots: int = 30
    pair_r_min: float | None = None
    learn: tuple[str, ...] = DEFAULT_LEARN
    angle: tuple[float, ...] | None = None        # initial Legendre coefficients (default: cos_theta0's)
    pair_values: tuple[float, ...] | None = None  # initial spline knot values (default: 0)

    @property
    def n_pairs(self) -> int:
        return self.n_species * (self.n_species + 1) // 2

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts the model has (``pair`` only with a spline)."""
        return tuple(p for p in PARTS if p != "pair" or self.pair_knots)

    def _initial(self) -> dict:
        s, p = self.n_species, self.n_pairs
        angle = sw_angle_coefficients(self.cos_theta0, self.angle_degree)
        if self.angle is not None:
            angle = np.zeros(self.angle_degree + 1)
            angle[:len(self.angle)] = self.angle
        out = {"epsilon": np.float64(math.log(self.epsilon)),
               "A": np.full(p, self.A, np.float64), "B": np.full(p, math.log(self.B), np.float64),
               "lam": np.full((s, p), self.lam, np.float64), "gamma": np.full(p, math.log(self.gamma), np.float64),
               "angle": np.broadcast_to(angle, (s, p, self.angle_degree + 1)).astype(np.float64)}
        if self.pair_knots:
            knots = np.zeros(self.pair_knots - 1) if self.pair_values is None else np.asarray(self.pair_values)
            out["pair"] = np.broadcast_to(knots, (p, self.pair_knots - 1)).astype(np.float64)
        return out

    def init(self, key=None) -> dict:
        """The learned parts at their config values (logarithms for ε, B, γ)."""
        del key
        init = self._initial()
        return {k: jnp.asarray(init[k]) for k in self.learn}

    def values(self, params) -> dict:
        """Every part in natural units (ε, A, B, λ, γ, b_l, spline knots), learned or fixed."""
        init = self._initial()
        full = {k: (params[k] if k in params else jnp.asarray(init[k])) for k in init}
        return {k: (jnp.exp(v) if k in LOG_PARTS else v) for k, v in full.items()}

    # -- energy on the neighbour list ----------------------------------------------------
    def _spline(self, knots, r):
        """s(r) for knot values (K − 1,) (last knot 0), clamped end at the cutoff."""
        r_min = self.pair_r_min if self.pair_r_min is not None else 0.5 * self.cutoff
        grid = np.linspace(r_min, self.cutoff, self.pair_knots)
        y = jnp.concatenate([knots, jnp.zeros(1, knots.dtype)])
        m = jnp.asarray(spline_second_derivative_map(np.diff(grid)), y.dtype) @ y
        u = cubic_uniform(y, m, r_min, grid[1] - grid[0], jnp.clip(r, r_min, self.cutoff))
        return jnp.where(r < self.cutoff, u, 0.0)

    def energy(self, params, R, idx, box, species=None, strain=None, pair_prior=None):
        """U_θ(R) on a dense neighbour list ``idx`` (N, M) padded with N (minimum image in the
        orthorhombic ``box``; every displacement d → (I + ε) d under a ``strain`` ε), plus
        Σ_pairs ``pair_prior``(r) within the cutoff if given (one pass over the list)."""
        n, m = idx.shape
        v = self.values(params)
        dr = R[jnp.minimum(idx, n - 1)] - R[:, None, :]
        dr = minimum_image(dr, box)
        if strain is not None:
            dr = dr + jnp.einsum("...b,ab->...a", dr, jnp.asarray(strain, R.dtype))
        r2 = jnp.sum(dr * dr, -1)
        mask = (idx < n) & (r2 < self.cutoff ** 2)
        dr = jnp.where(mask[..., None], dr, jnp.zeros(3, dr.dtype).at[0].set(0.5 * self.cutoff))   # double-where
        d = jnp.sqrt(jnp.sum(dr * dr, -1))
        s = self.n_species
        spec = jnp.zeros(n, jnp.int32) if species is None or s == 1 else jnp.asarray(species, jnp.int32)
        spec_nb = spec[jnp.minimum(idx, n - 1)]                                  # (N, M) neighbour species
        table = jnp.asarray(_pair_index(s))
        pidx = table[spec[:, None], spec_nb]                                     # (N, M) bond's species pair
        x = d / self.sigma - self.a
        inside = mask & (x < 0)
        xs = jnp.where(inside, x, -1.0)
        # pair terms on directed slots (each pair twice, hence ½)
        u2 = jnp.where(inside, v["epsilon"] * v["A"][pidx] * (v["B"][pidx] * (d / self.sigma) ** -4 - 1.0)
                       * jnp.exp(1.0 / xs), 0.0)
        if self.pair_knots:
            spl = jnp.stack([self._spline(v["pair"][p], d) for p in range(self.n_pairs)], 0)
            u2 = u2 + jnp.where(mask, jnp.take_along_axis(spl, pidx[None], 0)[0], 0.0)
        if pair_prior is not None:
            u2 = u2 + jnp.where(mask, pair_prior(d), 0.0)
        # three-body terms by the tensor identity (module docstring): no triplet list
        g = jnp.where(inside, jnp.exp(v["gamma"][pidx] / xs), 0.0)              # (N, M)
        mono = monomials(dr / d[..., None], self.angle_degree)                 # (N, M, C)
        onehot = (spec_nb[..., None] == jnp.arange(s)).astype(g.dtype)           # (N, M, S)
        beta = v["epsilon"] * v["lam"][..., None] * (v["angle"] @ jnp.asarray(_legendre_to_power(
            self.angle_degree), g.dtype))                                         # (S, P, L + 1) power series
        coef = monomial_coefficients(beta[spec][:, table], self.angle_degree)   # (N, S, S, C)
        three = angular_sum(g, mono, onehot, coef)
        return 0.5 * jnp.sum(u2) + 0.5 * jnp.sum(three)


def build(cfg) -> ThreeBodyModel:
    """The model from ``{kind: three_body, cutoff, [sigma, a, epsilon, A, B, lam, gamma, cos_theta0,
    angle, angle_degree, pair_knots, pair_r_min, pair_values, n_species, learn]}``
    (configs/model/three_body.yaml)."""
    mapping(cfg, "model", "model: {kind: three_body, cutoff: 0.5}")
    unknown = sorted(str(k) for k in cfg if k not in KEYS)
    if unknown:
        raise UserError(f"model: unknown key(s) {', '.join(unknown)} for kind three_body",
                        f"remove them; the keys are {', '.join(KEYS[1:])}")
    cutoff = number(cfg, "cutoff", prefix="model", lo=0.0, lo_open=True, example="0.5")
    a = number(cfg, "a", prefix="model", lo=0.0, lo_open=True, required=False, default=1.8, example="1.8")
    sigma = number(cfg, "sigma", prefix="model", lo=0.0, lo_open=True, required=False, default=cutoff / a,
                   example=f"{cutoff / a:.4g}")
    if a * sigma > cutoff * (1 + 1e-6):
        raise UserError(f"model: the three-body range a·σ = {a * sigma:.4g} reaches beyond model.cutoff={cutoff:g}",
                        f"set model.cutoff={a * sigma:.4g} or a smaller model.sigma (the graph is built at the cutoff)")
    kw = {"cutoff": cutoff, "a": a, "sigma": sigma}
    for key, default, positive in (("epsilon", 1.0, True), ("A", 0.0, False), ("B", 0.6022245584, True),
                                   ("lam", 0.0, False), ("gamma", 1.2, True)):
        kw[key] = number(cfg, key, prefix="model", lo=0.0 if positive else None, lo_open=positive, required=False,
                         default=default, example=str(default))
    kw["cos_theta0"] = number(cfg, "cos_theta0", prefix="model", lo=-1.0, hi=1.0, required=False,
                              default=-1.0 / 3.0, example="-0.333333")
    kw["angle_degree"] = number(cfg, "angle_degree", prefix="model", integer=True, lo=2, hi=12, required=False,
                                default=4, example="4")
    kw["n_species"] = number(cfg, "n_species", prefix="model", integer=True, lo=1, required=False, default=1,
                             example="1")
    kw["pair_knots"] = number(cfg, "pair_knots", prefix="model", integer=True, lo=0, required=False, default=30,
                              example="30")
    if 0 < kw["pair_knots"] < 4:
        raise UserError(f"model.pair_knots must be 0 (no spline) or >= 4, got {kw['pair_knots']}",
                        "set model.pair_knots=30")
    kw["pair_r_min"] = number(cfg, "pair_r_min", prefix="model", lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                              required=False, default=None, example=f"{0.5 * cutoff:.3g}")
    kw["angle"] = _values(cfg, "angle", kw["angle_degree"] + 1, "Legendre coefficients b_0 … b_angle_degree",
                          "[0.444, 0.667, 0.667]")
    if cfg.get("pair_values") is not None and not kw["pair_knots"]:
        raise UserError("model.pair_values is set but model.pair_knots=0 (no spline)",
                        "remove model.pair_values or set model.pair_knots")
    kw["pair_values"] = _values(cfg, "pair_values", kw["pair_knots"] - 1,
                                "knot values on [pair_r_min, cutoff) (the last knot, at the cutoff, is 0)",
                                f"[{', '.join(['0.0'] * max(kw['pair_knots'] - 1, 1))}]", exact=True)
    learn = cfg.get("learn")
    if learn is None:   # default: every part the model has, except ε (the scale A and λ already set)
        learn = [k for k in DEFAULT_LEARN if k != "pair" or kw["pair_knots"]]
    if isinstance(learn, str) or not all(isinstance(k, str) for k in (learn or [])):
        raise UserError(f"model.learn must be a list of names, got {learn!r}", f"e.g. model.learn=[{','.join(DEFAULT_LEARN)}]")
    bad = sorted(set(learn) - set(PARTS))
    if bad:
        raise UserError(f"model.learn: unknown part(s) {bad}", f"use names from {', '.join(PARTS)}")
    if "pair" in learn and not kw["pair_knots"]:
        raise UserError("model.learn lists 'pair' but model.pair_knots=0 (no spline)",
                        "remove 'pair' from model.learn or set model.pair_knots=30")
    if not learn:
        raise UserError("model.learn is empty: nothing to learn", f"e.g. model.learn=[{','.join(DEFAULT_LEARN)}]")
    return ThreeBodyModel(learn=tuple(dict.fromkeys(learn)), **kw)


def _values(cfg, key: str, n: int, what: str, example: str, exact: bool = False):
    """An optional list of initial values: at most ``n`` (exactly ``n`` if ``exact``) numbers."""
    vals = cfg.get(key)
    if vals is None:
        return None
    try:
        vals = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise UserError(f"model.{key} must be a list of numbers ({what}), got {vals!r}",
                        f"e.g. model.{key}={example}") from None
    if not all(math.isfinite(v) for v in vals) or not vals or len(vals) > n or (exact and len(vals) != n):
        raise UserError(f"model.{key}: {'exactly' if exact else 'at most'} {n} finite numbers ({what}), "
                        f"got {len(vals)}", f"e.g. model.{key}={example}")
    return vals
