"""`difftre evaluate` of a ``trainer=static`` run: properties at the start and fitted parameters,
``evaluation.json``, a convergence plot, the loss landscape over two parameters with the
optimisation path, and (``evaluate.phonons.enabled``) phonon dispersion and DOS via phonopy."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import phonons, units
from .crystal import STRUCTURES, Crystal
from .compare import COMPARISON
from .evaluate_base import Evaluator, Section, always, evaluate_section
from .learn.static import build_problem, load_params, use_neighbor_list
from .observables.elastic import bulk_modulus, periodic_energy, voigt_to_mandel
from .potentials.classical import fixed_neighbor_list
from .store import RunStore

log = logging.getLogger("difftre")

NOTATION = ("C_voigt: Voigt notation, engineering shear strains e4 = 2 eps_yz etc., C44 = C_yzyz; "
            "C_mandel: Mandel notation, shear rows/columns weighted by sqrt(2), so C44_Mandel = 2 C44_Voigt. "
            "Relaxed-ion (internal relaxation included), GPa.")


def _props_summary(p) -> dict:
    base = {"stress_voigt_GPa": np.asarray(p["stress"]).tolist(), "energy_per_atom_eV": float(p["energy_per_atom"]),
            "residual_force_eV_per_A": float(p["residual_force"]), "cell_A": np.asarray(p["box"]).tolist()}
    if "C_voigt" not in p:   # no elastic target: the elastic tensor was not computed
        return {**base, **{k: float("nan") for k in ("C11", "C12", "C44", "bulk_modulus_GPa")}}
    Cv = np.asarray(p["C_voigt"])
    return {"C_voigt_GPa": Cv.tolist(), "C_mandel_GPa": np.asarray(p["C_mandel"]).tolist(),
            "C11": float(Cv[0, 0]), "C12": float(Cv[0, 1]), "C44": float(Cv[3, 3]),
            "bulk_modulus_GPa": float(bulk_modulus(Cv)), "stress_voigt_GPa": np.asarray(p["stress"]).tolist(),
            "energy_per_atom_eV": float(p["energy_per_atom"]), "residual_force_eV_per_A": float(p["residual_force"]),
            "cell_A": np.asarray(p["box"]).tolist()}


@dataclass
class StaticRun:
    """A ``trainer=static`` run at its fitted parameters (``x_fit``, ``p_fit``: set by the static section)."""
    cfg: Any
    run_dir: Path
    prob: Any
    fitted: dict
    iterations: int
    attrs: dict
    rows: list
    x_fit: Any = None
    p_fit: Any = None
    plots: list = field(default_factory=list)   # the files written, listed in evaluation.json


def load(cfg, run_dir) -> StaticRun:
    prob = build_problem(cfg)
    fitted, iterations, attrs, rows = load_params(RunStore(run_dir), prob)
    return StaticRun(cfg, Path(run_dir), prob, fitted, iterations, attrs, rows)


def static(r: StaticRun, out: dict) -> None:
    """The 0 K properties (elastic constants, stress, energy) and each target's loss at the start
    and fitted parameters; the convergence plot."""
    prob, fitted, attrs = r.prob, r.fitted, r.attrs
    x_fit = prob.x_of(fitted)
    x_init = np.ones_like(x_fit)
    l_fit, (t_fit, p_fit) = prob.loss_and_props(x_fit)
    l_ini, (t_ini, p_ini) = prob.loss_and_props(x_init)
    pot = prob.potential
    out.update({"run": str(r.run_dir), "trainer": "static", "potential": pot.kind,
                "units": {**units.METAL.to_dict(), "moduli": "GPa", "force_constants": "eV/angstrom^2"},
                "notation": NOTATION, "optimizer": attrs.get("optimizer"), "iterations": int(r.iterations),
                "converged": bool(attrs.get("converged", False)), "message": str(attrs.get("message", "")),
                "loss_evaluations": int(attrs.get("n_fev", 0)), "fit_wall_time_s": float(attrs.get("wall_s", float("nan"))),
                "parameters": {"learnable": list(pot.learnable), "fitted": pot.full(fitted), "initial": dict(pot.values),
                               "units": pot.units()},
                "loss": {"initial": float(l_ini), "fitted": float(l_fit)},
                "properties": {"fitted": _props_summary(p_fit), "initial": _props_summary(p_ini)},
                "targets": {}})
    for name, t in prob.targets.items():
        d = {"kind": t.kind, "gamma": t.gamma, "power": t.power, "source": t.source,
             "loss_initial": float(t_ini[name]), "loss_fitted": float(t_fit[name])}
        if t.kind == "elastic":
            d.update({"notation_of_loss": t.notation, "C_voigt_GPa": np.asarray(t.value).tolist(),
                      "C_mandel_GPa": np.asarray(voigt_to_mandel(t.value)).tolist(),
                      "C11": float(t.value[0, 0]), "C12": float(t.value[0, 1]), "C44": float(t.value[3, 3])})
        elif t.from_params is not None:
            d["from_params"] = t.from_params
            d["recovered"] = {k: {"target": v, "fitted": fitted[k], "initial": pot.values[k],
                                  "relative_error": abs(fitted[k] - v) / abs(v)}
                              for k, v in t.from_params.items() if k in fitted}
        out["targets"][name] = d
    r.x_fit, r.p_fit = x_fit, p_fit
    r.plots.append(_plot_convergence(r.run_dir, r.rows, prob))


def _landscape_on(cfg) -> bool:
    return bool((evaluate_section(cfg).get("landscape", {}) or {}).get("enabled", True))


def landscape(r: StaticRun, out: dict) -> None:
    """The loss on a grid over two learnable parameters, with the optimisation path."""
    if len(r.prob.x_names) >= 2:
        land = evaluate_section(r.cfg).get("landscape", {}) or {}
        out["landscape"], png = _landscape(r.run_dir, r.prob, r.rows, r.x_fit, land)
        r.plots.append(png)


def _phonons_on(cfg) -> bool:
    return bool((evaluate_section(cfg).get("phonons", {}) or {}).get("enabled", False))


def phonons_section(r: StaticRun, out: dict) -> None:
    """Phonon dispersion and DOS at the fitted parameters (phonopy)."""
    ph_cfg = evaluate_section(r.cfg).get("phonons", {}) or {}
    out["phonons"], written = _phonons(r.run_dir, r.prob, r.fitted, r.p_fit, ph_cfg)
    r.plots += written


def files(r: StaticRun, out: dict) -> None:
    out["files"] = [p.name for p in r.plots]


def report(r: StaticRun, out: dict) -> None:
    _summary(out)


def _plot_convergence(run_dir, rows, prob):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    it = [r["update"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.semilogy(it, [r["loss"] for r in rows], "o-")
    a1.set_xlabel("iteration")
    a1.set_ylabel("loss")
    for k, t0 in zip(prob.x_names, prob.theta0):
        a2.plot(it, [r[f"param_{k}"] / t0 for r in rows], "o-", label=k)
    a2.set_xlabel("iteration")
    a2.set_ylabel("parameter / start value")
    a2.legend()
    fig.tight_layout()
    p = Path(run_dir) / "convergence.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _landscape(run_dir, prob, rows, x_fit, cfg):
    """Loss on a grid over two learnable parameters (the others at their fitted values ``x_fit``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(cfg.get("params") or prob.x_names[:2])
    idx = [prob.x_names.index(n) for n in names]
    path = np.array([[r[f"param_{n}"] for n in names] for r in rows])
    npts, margin = int(cfg.get("points", 21)), float(cfg.get("margin", 0.25))
    axes = []
    for j in range(2):
        lo, hi = path[:, j].min(), path[:, j].max()
        pad = max(margin * (hi - lo), 0.05 * abs(path[-1, j]))
        axes.append(np.linspace(lo - pad, hi + pad, npts))
    L = np.zeros((npts, npts))
    for a, va in enumerate(axes[0]):
        for b, vb in enumerate(axes[1]):
            x = x_fit.copy()
            x[idx[0]] = va / prob.theta0[idx[0]]
            x[idx[1]] = vb / prob.theta0[idx[1]]
            L[b, a] = float(prob.loss_and_props(x)[0])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cs = ax.contourf(axes[0], axes[1], np.log10(np.maximum(L, 1e-12)), levels=30, cmap="viridis")
    fig.colorbar(cs, label="log10 loss")
    ax.plot(path[:, 0], path[:, 1], "w.-", lw=1)
    ax.plot(path[0, 0], path[0, 1], "ws", label="start")
    ax.plot(path[-1, 0], path[-1, 1], "r*", ms=12, label="fitted")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(loc="best")
    fig.tight_layout()
    p = Path(run_dir) / "loss_landscape.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return {"params": names, names[0]: axes[0].tolist(), names[1]: axes[1].tolist(), "loss": L.tolist(),
            "path": path.tolist()}, p


def cfg_structure(prob) -> str:
    return next((k for k, v in STRUCTURES.items() if np.array_equal(v, prob.crystal.unit_cell_frac)), "")


def _phonons(run_dir, prob, fitted, p_fit, cfg):
    cr = prob.crystal
    n_unit = cr.unit_cell_frac.shape[0]
    reps = np.asarray(cr.replicate, float)
    box = np.asarray(p_fit["box"])
    unit_cell = box / reps[None, :]
    unit_frac = (np.asarray(p_fit["frac"])[:n_unit] * reps) % 1.0   # shift (0,0,0) block of the supercell
    ph = phonons.make_phonopy(unit_frac, unit_cell, cr.symbol, cr.mass, cr.replicate,
                              primitive_matrix="F" if cfg_structure(prob) == "diamond" else "auto")
    pot = prob.potential

    def builder(cell, frac):
        sc = Crystal(np.asarray(frac), np.asarray(cell), cr.symbol, cr.mass, unit_frac, unit_cell, cr.replicate)
        nbrs = fixed_neighbor_list(pot, frac, cell) if use_neighbor_list(pot, sc) else None
        return periodic_energy(lambda d: pot.energy_fn(d, fitted, nbrs), cell)
    fc = phonons.supercell_force_constants(ph, builder)
    res = phonons.analyse(ph, fc, mesh=tuple(cfg.get("mesh", [16, 16, 16])), band_points=int(cfg.get("band_points", 51)))
    files = phonons.write(res, run_dir)
    summary = {"supercell": list(cr.replicate), "n_atoms_supercell": int(fc.shape[0]),
               "gamma_frequencies_THz": res.gamma_frequencies.tolist(), "acoustic_sum_rule_max_eV_per_A2": res.acoustic_sum_max,
               "max_frequency_THz": float(max(f.max() for f in res.frequencies)),
               "min_frequency_THz": float(min(f.min() for f in res.frequencies)), "files": [f.name for f in files]}
    return summary, files


def _summary(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"difftre evaluate (static) — {out['run']}")
    t.add_column("quantity")
    t.add_column("initial", justify="right")
    t.add_column("fitted", justify="right")
    for k in out["parameters"]["learnable"]:
        t.add_row(k, f"{out['parameters']['initial'][k]:.8g}", f"{out['parameters']['fitted'][k]:.8g}")
    for c in ("C11", "C12", "C44", "bulk_modulus_GPa"):
        t.add_row(f"{c} (GPa, Voigt)", f"{out['properties']['initial'][c]:.4f}", f"{out['properties']['fitted'][c]:.4f}")
    t.add_row("loss", f"{out['loss']['initial']:.6g}", f"{out['loss']['fitted']:.6g}")
    t.add_row("optimiser / iterations", "", f"{out['optimizer']} / {out['iterations']}")
    if "phonons" in out:
        t.add_row("max phonon frequency (THz)", "", f"{out['phonons']['max_frequency_THz']:.3f}")
    Console().print(t)


#: the ``trainer=static`` evaluator (learn/registry.py: TrainerKind.evaluator "static")
STATIC = Evaluator(load, (Section("static", always, static), Section("landscape", _landscape_on, landscape),
                          Section("phonons", _phonons_on, phonons_section), Section("files", always, files), COMPARISON), report)
