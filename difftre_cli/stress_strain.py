"""Stress–strain curve of a crystal under the learned potential, checked against the
stress-fluctuation stiffness (``difftre evaluate`` with ``evaluate.stress_strain``).

For each strain magnitude δ in ``strains`` and each sign, the box is strained h → (I + ε) h by a
uniaxial Voigt strain e1 = ±δ (ε_xx) and by an engineering shear e4 = ±δ (ε_yz = ε_zy = e4/2);
an NVT run of the strained crystal (the run's own sampler and thermostat, started from the last
configuration of the unstrained evaluation run) gives the mean Cauchy stress

    σ(ε) = (1/Ω(ε)) ⟨∂U/∂δ⟩ − (N k_B T/Ω(ε)) I,     Ω(ε) = det(I + ε) Ω₀,

tension positive, with ∂U/∂δ the derivative with respect to a further strain δ of the strained
crystal (potentials/manybody.py: the crystal is simulated in the reference frame of the cubic box
with every displacement mapped by (I + ε), which samples exactly the strained crystal's
configurations; its lists reach far enough for every pair inside the cutoff after the strain).
Standard errors: a jackknife over ten blocks of each run (production.production_run).

The unstrained point is the evaluation run itself (its ``stress`` observable). A weighted
polynomial of degree ``fit_degree`` through the points gives the slopes at zero strain

    B11 = ∂σ_xx/∂e1,   B12 = ∂(σ_yy + σ_zz)/2/∂e1,   B44 = ∂σ_yz/∂e4,

which are compared with the stress-fluctuation stiffness C of the same evaluation run turned into
the same stress–strain coefficients, B = C + prestress terms
(observables/stiffness.stress_strain_moduli; B = C at zero stress). A degree ≥ 2 keeps the
curvature (third-order elastic constants) out of the slope.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .checks import number
from .errors import UserError
from .observables.elastic import strain_matrix as voigt_strain
from .observables.engine import ObservableEngine
from .observables.mechanical import Stiffness, Stress
from .observables.stiffness import stress_strain_moduli
from .observables.stress import tensor_to_voigt_stress
from .production import production_run
from .units import stress_factor

MODES = {"e1": 0, "e4": 3}          # Voigt component strained: uniaxial xx, shear yz (engineering)
KEYS = ("strains", "equilibration_steps", "production_steps", "every", "fit_degree", "blocks")


@dataclass(frozen=True)
class Settings:
    strains: tuple = (0.01, 0.02)    # magnitudes δ; runs at +δ and −δ for e1 and for e4
    equilibration_steps: int = 2000  # per strained run
    production_steps: int = 20000    # per strained run
    every: int = 50
    fit_degree: int = 3
    blocks: int = 10                 # jackknife blocks per strained run


def settings(ev) -> Settings | None:
    """``evaluate.stress_strain``: null/false (off), true (defaults) or a mapping of
    :class:`Settings` fields."""
    raw = ev.get("stress_strain") if ev is not None else None
    if raw is None or raw is False:
        return None
    if raw is True:
        return Settings()
    if not hasattr(raw, "items"):
        raise UserError(f"evaluate.stress_strain must be true, false or a mapping, got {raw!r}",
                        "e.g. evaluate.stress_strain={strains: [0.01, 0.02], production_steps: 20000}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UserError(f"evaluate.stress_strain: unknown key(s) {unknown}", f"valid keys: {list(KEYS)}")
    d = Settings()
    strains = raw.get("strains", d.strains)
    try:
        strains = tuple(float(x) for x in strains)
    except (TypeError, ValueError):
        raise UserError(f"evaluate.stress_strain.strains must be a list of numbers, got {strains!r}",
                        "e.g. strains: [0.01, 0.02]") from None
    if not strains or any(not (0.0 < x <= 0.1) for x in strains) or len(set(strains)) != len(strains):
        raise UserError(f"evaluate.stress_strain.strains={list(strains)}: need distinct magnitudes in (0, 0.1]",
                        "e.g. strains: [0.01, 0.02] (1 % and 2 %; each is run at + and −)")
    P = "evaluate.stress_strain"
    kw = {k: int(number(raw, k, prefix=P, integer=True, lo=lo, required=False, default=getattr(d, k), example=ex))
          for k, lo, ex in (("equilibration_steps", 0, "2000"), ("production_steps", 1, "20000"),
                            ("every", 1, "50"), ("fit_degree", 1, "3"), ("blocks", 2, "10"))}
    s = Settings(strains=strains, **kw)
    if 2 * len(strains) + 1 <= s.fit_degree:
        raise UserError(f"{P}.fit_degree={s.fit_degree} needs more than {s.fit_degree} strain points; "
                        f"{len(strains)} magnitudes give {2 * len(strains) + 1}",
                        "add strain magnitudes or lower fit_degree")
    if s.production_steps < s.blocks * s.every:
        raise UserError(f"{P}.production_steps={s.production_steps} gives fewer than one snapshot per block "
                        f"({s.blocks} blocks, every {s.every})", "raise production_steps or lower every/blocks")
    return s


def strain_matrix(e) -> np.ndarray:
    """Symmetric 3×3 strain of a Voigt vector (engineering shears): ``elastic.strain_matrix``."""
    import jax.numpy as jnp

    return np.asarray(voigt_strain(jnp.asarray(e, dtype=float)), float)


def strained(c, eps):
    """The run's components for its crystal strained by ε (3, 3): the strained potential, a
    ``stress`` observable (Voigt) and an observable engine whose volume is Ω(ε)."""
    pot = c.potential.strained(eps)
    ctx = replace(c.ctx, volume=float(c.ctx.volume * np.linalg.det(np.eye(3) + np.asarray(eps, float))))
    obs = {"stress": Stress(name="stress", form="voigt")}
    engine = ObservableEngine(pot, obs, ctx, c.system.box_size, 1.0 / float(c.system.kT))
    return replace(c, potential=pot, observables=obs, targets={}, engine=engine, learner=None, ctx=ctx)


def fit_slope(strains, values, errors, degree: int) -> tuple[float, float]:
    """Weighted least-squares polynomial y(e) = a + b e + … of ``degree``: the slope b at e = 0 and
    its standard error."""
    e, y = np.asarray(strains, float), np.asarray(values, float)
    err = np.maximum(np.asarray(errors, float), 1e-12 * max(1.0, float(np.max(np.abs(y)))))
    if len(e) <= degree:
        raise ValueError(f"a degree-{degree} fit needs more than {degree} points, got {len(e)}")
    A = np.stack([e ** k for k in range(degree + 1)], axis=1) / err[:, None]
    cov = np.linalg.inv(A.T @ A)
    coef = cov @ A.T @ (y / err)
    return float(coef[1]), float(np.sqrt(cov[1, 1]))


def _voigt_stress(obs, value, error):
    """(Voigt value, Voigt error) of a ``stress`` observable in either form."""
    value, error = np.asarray(value, float), np.asarray(error, float)
    if obs.form == "voigt":
        return value, error
    return (np.asarray(tensor_to_voigt_stress(value.reshape(3, 3)), float),
            np.asarray(tensor_to_voigt_stress(error.reshape(3, 3)), float))


def _voigt_stiffness(obs, value, error):
    """(6, 6) Voigt C and the errors of (B11, B12, B44)-like entries (C11, C12, C44) of a
    ``stiffness`` observable in either form."""
    value, error = np.asarray(value, float), np.asarray(error, float)
    if obs.form == "cubic":
        c11, c12, c44 = value
        C = np.zeros((6, 6))
        C[:3, :3] = c12
        C[[0, 1, 2], [0, 1, 2]] = c11
        C[[3, 4, 5], [3, 4, 5]] = c44
        return C, error
    C, E = np.zeros((6, 6)), np.zeros((6, 6))
    iu = np.triu_indices(6)
    C[iu], E[iu] = value, error
    C, E = C + np.triu(C, 1).T, E + np.triu(E, 1).T
    return C, np.array([np.mean(np.diag(E)[:3]), np.mean([E[1, 0], E[2, 0]]), np.mean(np.diag(E)[3:])])


def _pick(obs_type, observables):
    return next(((k, o) for k, o in observables.items() if isinstance(o, obs_type)), (None, None))


def run(c, params, s: Settings, seed: int, main, log=None) -> dict:
    """The stress–strain curve and its comparison with the fluctuation stiffness; ``main`` is the
    unstrained evaluation run (production.Production) of the components ``c``."""
    if not c.potential.can_strain:
        raise UserError("evaluate.stress_strain needs a many-body potential (model=three_body or dimenet) that "
                        "can be strained", "remove evaluate.stress_strain, or use model=three_body")
    to_gpa, unit = _stress_unit(c.system.units)
    name, st_obs = _pick(Stress, c.observables)
    if name is None or main.errors is None:
        zero = production_run(strained(c, np.zeros((3, 3))), params, 0, s.production_steps, s.every, seed,
                              chunk=s.production_steps // s.blocks, positions=main.positions)
        s0, s0e = zero.means["stress"], zero.errors["stress"]
    else:
        s0, s0e = _voigt_stress(st_obs, main.means[name], main.errors[name])
    points = {m: [(0.0, s0, s0e)] for m in MODES}
    runs = []
    for mode, col in MODES.items():
        for d in s.strains:
            for sign in (1.0, -1.0):
                e = np.zeros(6)
                e[col] = sign * d
                prod = production_run(strained(c, strain_matrix(e)), params, s.equilibration_steps, s.production_steps,
                                      s.every, seed, chunk=s.production_steps // s.blocks, positions=main.positions)
                sm, se = prod.means["stress"], prod.errors["stress"]
                points[mode].append((sign * d, sm, se))
                runs.append({"mode": mode, "strain": sign * d, "stress": (sm * to_gpa).tolist(),
                             "stress_error": (se * to_gpa).tolist(), "snapshots": prod.n, "mean_kinetic_kT": prod.kT})
                if log is not None:
                    log.info("stress-strain %s = %+.4f: stress %s ± %s %s", mode, sign * d,
                             np.round(sm * to_gpa, 3).tolist(), np.round(se * to_gpa, 3).tolist(), unit)
    picks = {"B11": ("e1", lambda v: v[0]), "B12": ("e1", lambda v: 0.5 * (v[1] + v[2])), "B44": ("e4", lambda v: v[3])}
    slopes = {}
    for k, (mode, f) in picks.items():
        pts = sorted(points[mode], key=lambda p: p[0])
        slopes[k] = fit_slope([p[0] for p in pts], [f(p[1]) * to_gpa for p in pts],
                              [f(p[2]) * to_gpa for p in pts], s.fit_degree)
    out = {"unit": unit, "strains": list(s.strains), "fit_degree": s.fit_degree,
           "production_steps": s.production_steps, "equilibration_steps": s.equilibration_steps, "every": s.every,
           "zero_strain_stress": (s0 * to_gpa).tolist(), "zero_strain_stress_error": (s0e * to_gpa).tolist(),
           "runs": runs, "slopes": {k: {"value": v[0], "error": v[1]} for k, v in slopes.items()}}
    cname, c_obs = _pick(Stiffness, c.observables)
    if cname is not None and main.errors is not None:
        C, Ce = _voigt_stiffness(c_obs, main.means[cname], main.errors[cname])
        B = np.asarray(stress_strain_moduli(C, s0)) * to_gpa
        fluct = {"B11": float(np.mean(np.diag(B)[:3])), "B12": float(np.mean([B[1, 0], B[2, 0]])),
                 "B44": float(np.mean(np.diag(B)[3:]))}
        s_err = float(np.max(s0e[:3])) * to_gpa   # the prestress terms add at most ~σ's error
        comp = {}
        for i, k in enumerate(("B11", "B12", "B44")):
            fe = float(np.hypot(Ce[i] * to_gpa, s_err))
            diff, comb = slopes[k][0] - fluct[k], float(np.hypot(slopes[k][1], fe))
            comp[k] = {"stress_strain": slopes[k][0], "stress_strain_error": slopes[k][1], "fluctuation": fluct[k],
                       "fluctuation_error": fe, "difference": diff, "combined_error": comb,
                       "within_2_sigma": bool(abs(diff) <= 2.0 * comb)}
        out["comparison"] = comp
    return out


def _stress_unit(units) -> tuple[float, str]:
    """(factor from the internal stress unit, its name): GPa where the system has one."""
    if units.name in ("real", "metal"):
        return 1.0 / stress_factor("GPa", units), "GPa"
    return 1.0, f"{units.energy}/{units.length}^3"
