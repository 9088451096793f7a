"""The sections of ``difftre evaluate`` for a run of an MD trainer (difftre, direct_ad, ibi):
``observables`` (the production run(s) with the final parameters: observables with jackknife
errors, targets), ``stress_strain`` (``evaluate.stress_strain``: strained runs of a crystal),
``temperature`` (the mean kinetic kT) and ``potential`` (the learned potential against the
ground truth); the report writes the plots, their curves as CSV files (curves.py) and the
summary table. With several state points (``states``) each one gets its own production run;
their targets and observables are reported as ``<state>_<name>``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import assemble, stress_strain
from .compare import COMPARISON
from .curves import write_curves
from .errors import UserError
from .evaluate_base import Evaluator, Section, always, evaluate_section
from .evaluate_molecule import is_molecule_run, molecule, summary_rows
from .observables.density import Density
from .observables.mechanical import cubic_moduli
from .observables.rdf import RDF
from .plots import plot_all
from .production import production_run
from .states import is_multistate
from .store import RunStore
from .units import BAR_PER_KJ_MOL_NM3, GPA_PER_KJ_MOL_NM3, unit_name

log = logging.getLogger("difftre")


@dataclass
class MDRun:
    """A run of an MD trainer at its final parameters."""
    cfg: Any
    run_dir: Path
    states: list                                  # [(state name, components)]; [("", c)]: one state point
    params: Any
    rows: list                                    # metrics.csv of the training
    runs: dict = field(default_factory=dict)      # state -> its production run (the observables section)


def load(cfg, run_dir) -> MDRun:
    states = assemble.build_states(cfg) if is_multistate(cfg) else [("", assemble.build(cfg))]
    store = RunStore(run_dir)
    _, trees, _, rows = store.read_checkpoint({"params": states[0][1].potential.init(jax.random.PRNGKey(0))})
    return MDRun(cfg, Path(run_dir), states, trees["params"], rows)


def select_state(states: list, state: str | None):
    """(name, components) of the state point ``state`` of a loaded run (MDRun.states); None: the
    only one (a UserError naming the choices when there are several or ``state`` is not one)."""
    names = [n for n, _ in states]
    if state is None:
        if len(states) > 1:
            raise UserError(f"this run has {len(states)} state points ({', '.join(names)}): which one's potential?",
                            f"add state={names[0]} (a temperature-dependent model differs between them)")
        return states[0]
    for n, c in states:
        if n == state:
            return n, c
    raise UserError(f"state={state}: no such state point" + (f" (the run has {', '.join(names)})" if names[0] else
                                                              " (the run has one state point)"),
                    f"use one of {', '.join(names)}" if names[0] else "remove state=")


def observables(r: MDRun, out: dict) -> None:
    """The production run of each state point: observables (jackknife errors over the chunks of
    ``evaluate.chunk_steps``), targets and their RMSE."""
    cfg, c = r.cfg, r.states[0][1]
    ev = evaluate_section(cfg)
    eq, steps, every = int(ev.get("equilibration_steps", 5000)), int(ev.get("production_steps", 20000)), int(ev.get("every", 20))
    out.update({"run": str(r.run_dir), "production_steps": steps, "snapshots": 0, "units": c.system.units.to_dict(),
                "targets": {}, "observables": {}})
    for state, c_s in r.states:
        r.runs[state] = run = production_run(c_s, r.params, eq, steps, every, seed=int(cfg.seed) + 1,
                                             chunk=int(ev.get("chunk_steps", 2000)))
        out["snapshots"] += run.n
        out["production_steps"] = run.steps
        _state_results(out, c_s, run.means, r.rows, f"{state}_" if state else "", run.errors)


def temperature(r: MDRun, out: dict) -> None:
    """The mean kinetic temperature of the production run(s) (after stress_strain: the key order
    of evaluation.json is kept as it was)."""
    kTs = {state: run.kT for state, run in r.runs.items()}
    out["mean_kinetic_kT"] = kTs[""] if "" in kTs else float(np.mean(list(kTs.values())))
    if len(kTs) > 1:
        out["mean_kinetic_kT_per_state"] = kTs


def _stress_strain_on(cfg) -> bool:
    return stress_strain.settings(evaluate_section(cfg)) is not None


def _stress_strain(r: MDRun, out: dict) -> None:
    """Strained runs of a crystal from the production run's last state (stress_strain.py)."""
    if len(r.states) > 1:
        raise UserError("evaluate.stress_strain is for a single state point",
                        "evaluate the crystal's state point on its own (states=null)")
    ss = stress_strain.settings(evaluate_section(r.cfg))
    out["stress_strain"] = stress_strain.run(r.states[0][1], r.params, ss, int(r.cfg.seed) + 2, r.runs[""], log)


def potential(r: MDRun, out: dict) -> None:
    """The learned potential (pair, per species pair, one-body) against the ground truth; with
    several state points and a temperature-dependent model, the curve at each state's kT."""
    c = r.states[0][1]
    out["potential"] = potential_curve(c, r.params, r.cfg)
    if len(r.states) > 1 and c.potential.temperature_dependent:   # u(r, T): the curve at each state's kT
        out["potential_per_state"] = {state: {"kT": float(c_s.system.kT), **potential_curve(c_s, r.params, r.cfg)}
                                      for state, c_s in r.states}


def report(r: MDRun, out: dict) -> None:
    plot_all(r.run_dir, out, r.rows)
    write_curves(r.run_dir, out)
    _summary(out)


def _state_results(out: dict, c, means: dict, rows, prefix: str, errors: dict | None = None) -> None:
    """Observables (with their standard errors, when the run had several chunks) and per-target
    errors of one state point into ``out`` (names get ``prefix``)."""
    system_units = c.system.units
    for name, obs in c.observables.items():
        out["observables"][prefix + name] = {"grid": None if obs.grid is None else np.asarray(obs.grid).tolist(),
                                             "value": np.asarray(means[name]).tolist(),
                                             "error": None if errors is None else np.asarray(errors[name]).tolist(),
                                             **_units_of(obs, system_units)}
        if obs.unit_kind == "pressure" and c.system.units.name == "real":
            out["observables"][prefix + name]["value_bar"] = float(means[name]) * BAR_PER_KJ_MOL_NM3
        if obs.unit_kind == "stress" and c.system.units.name == "real":
            _stress_results(out["observables"][prefix + name], obs, np.asarray(means[name]),
                            None if errors is None else np.asarray(errors[name]))
    for name, t in c.targets.items():
        pred = np.asarray(means[t.observable])
        rmse = float(np.sqrt(np.mean((pred - np.asarray(t.value)) ** 2)))
        start = None
        if rows and f"loss_{prefix}{name}" in rows[0] and t.gamma > 0:
            start = float(np.sqrt(rows[0][f"loss_{prefix}{name}"] / t.gamma))
        if c.observables[t.observable].unit_kind == "pressure" and c.system.units.name == "real":
            extra = {"error_bar": rmse * BAR_PER_KJ_MOL_NM3,
                     "error_bar_at_start": None if start is None else start * BAR_PER_KJ_MOL_NM3}
        else:
            extra = {}
        obs = c.observables[t.observable]
        out["targets"][prefix + name] = {"rmse": rmse, "rmse_at_start": start, "source": t.source,
                                         "grid": None if obs.grid is None else np.asarray(obs.grid).tolist(),
                                         "observable": pred.tolist(), "target": np.asarray(t.value).tolist(),
                                         "observable_name": prefix + t.observable,
                                         "rdf_deviation_D": _rdf_D(c, t, pred), **_units_of(obs, system_units),
                                         **extra}
        comps = c.observables[t.observable].components
        if comps:
            out["targets"][prefix + name]["components"] = list(comps)


def _units_of(obs, system_units) -> dict:
    """The units of an observable's values and grid (units.py's names), and for a function-valued
    one the symbols of grid and value (the columns of its curve file, curves.py)."""
    if obs.grid is None:
        return {"unit": unit_name(obs.unit_kind, system_units)}
    return {"unit": unit_name(obs.value_kind, system_units), "grid_unit": unit_name(obs.unit_kind, system_units),
            "symbols": list(obs.symbols)}


def _stress_results(entry: dict, obs, value, error=None) -> None:
    """Stress / stiffness in GPa by component (± standard error) and, for cubic stiffness
    constants, the moduli derived from them (observables.mechanical.cubic_moduli states the
    formulas)."""
    gpa = value * GPA_PER_KJ_MOL_NM3
    entry["components"] = list(obs.components)
    entry["value_GPa"] = dict(zip(obs.components, gpa.tolist()))
    if error is not None:
        entry["error_GPa"] = dict(zip(obs.components, (error * GPA_PER_KJ_MOL_NM3).tolist()))
    if tuple(obs.components) == ("C11", "C12", "C44"):
        entry["moduli_GPa"] = cubic_moduli(*gpa)   # poisson_* are ratios


def _rdf_D(c, t, pred):
    obs = c.observables[t.observable]
    if not isinstance(obs, RDF):
        return None
    return rdf_deviation(obs, pred, t.value, c.system.density, c.potential.cutoff)


def rdf_deviation(obs, g, g_ref, density: float, r_c: float) -> float | None:
    """D = 4πρ ∫_0^{r_c} r² (g(r) − g_ref(r))² dr (trapezoid on the observable's grid), the RDF
    deviation of the literature on learning pair potentials from RDFs; None for non-RDFs."""
    if not isinstance(obs, RDF):
        return None
    r = np.asarray(obs.grid, float)
    sel = r <= r_c
    diff2 = (np.asarray(g, float) - np.asarray(g_ref, float)) ** 2
    return float(4.0 * np.pi * density * np.trapezoid(r[sel] ** 2 * diff2[sel], r[sel]))


def potential_curve(c, params, cfg) -> dict:
    """The learned pair potential (prior + model) on [potential_r_min, cutoff] with its prior and,
    when the config knows it, the truth, the largest deviation and Δ. Mixtures: one curve per
    species pair under ``pairs``; ``delta`` and ``max_abs_error`` are then the sum and the
    maximum over the pairs."""
    pot = c.potential
    if pot.one_body:
        return external_curve(c, params)
    terms = pot.pair_terms()
    if not terms:   # many-body network: no pair curve
        return {"kind": "many_body"}
    if terms[0].key is not None:   # mixture: per species pair
        curves = {}
        for t in terms:
            truth = None if c.ground_truth is None else c.ground_truth[t.key]
            curves[t.key] = _pair_curve(lambda r, u=t.u: u(params, r), t.prior, truth, pot.cutoff, cfg)
        res = {"pairs": curves}
        if c.ground_truth is not None:
            res["delta"] = float(sum(v["delta"] for v in curves.values()))
            res["max_abs_error"] = float(max(v["max_abs_error"] for v in curves.values()))
            res["error_range"] = next(iter(curves.values()))["error_range"]
            res["delta_range"] = next(iter(curves.values()))["delta_range"]
        return res
    (t,) = terms
    return _pair_curve(lambda r: t.u(params, r), t.prior, c.ground_truth, pot.cutoff, cfg)


def _pair_curve(u_fn, prior_fn, ground_truth, cutoff: float, cfg) -> dict:
    lo = float(cfg.get("evaluate", {}).get("potential_r_min", 0.8))
    r = np.linspace(lo, cutoff, 200)
    total = np.asarray(u_fn(jnp.asarray(r)))
    prior = np.asarray(prior_fn(jnp.asarray(r)))
    res = {"r": r.tolist(), "total": total.tolist(), "prior": prior.tolist()}
    if ground_truth is not None:
        fn, cut = ground_truth
        truth = np.where(r < cut, np.asarray(fn(jnp.asarray(r))), 0.0)
        res["truth"] = truth.tolist()
        a, b = (float(x) for x in cfg.get("evaluate", {}).get("potential_error_range", [0.95, cutoff]))
        sel = (r >= a) & (r <= b)
        res["max_abs_error"] = float(np.max(np.abs(total[sel] - truth[sel])))
        res["error_range"] = [a, b]
        # Δ = ∫_{r0}^{rc} |U_fit − U_true| dr (trapezoid), r0 = 0.9 and rc = the cutoff by default
        r0, rc = (float(x) for x in cfg.get("evaluate", {}).get("delta_range", [0.9, cutoff]))
        fine = np.linspace(r0, rc, 400)
        u_fit = np.asarray(u_fn(jnp.asarray(fine)))
        u_true = np.where(fine < cut, np.asarray(fn(jnp.asarray(fine))), 0.0)
        res["delta"] = float(np.trapezoid(np.abs(u_fit - u_true), fine))
        res["delta_range"] = [r0, rc]
    return res


def external_curve(c, params, n: int = 400, threshold: float = 0.01) -> dict:
    """One-body potential u(x) = prior + model on the density window, with the prior and, when the
    config knows it, the true u(x). The learned u is compared with the truth in the sampled region
    — where the target density exceeds ``threshold`` × its maximum — after removing the additive
    constant (u is defined up to one): the target-density-weighted mean of u − u_true there.
    Also reported: the deviation with the constant that minimises it (``max_abs_error_minimax``)
    and in the well-sampled core (target density > 10 % of its maximum)."""
    dens = [(t, c.observables[t.observable]) for t in c.targets.values()
            if isinstance(c.observables[t.observable], Density)]
    pot = c.potential
    if dens:
        target, obs = dens[0]
        lo, hi = obs.x_min, obs.x_max
    else:
        target, obs = None, None
        lo, hi = pot.x_range()
    x = np.linspace(lo, hi, n)
    total = np.asarray(pot.u(params, jnp.asarray(x)), float)
    prior = np.asarray(pot.prior(jnp.asarray(x)), float)
    res = {"x": x.tolist(), "total": total.tolist(), "prior": prior.tolist(), "kind": "one_body"}
    if target is not None:
        rho = np.interp(x, np.asarray(obs.grid), np.asarray(target.value))
        sel = rho > threshold * rho.max()
        res["sampled_region"] = [float(x[sel].min()), float(x[sel].max())]
        res["sampled_region_rule"] = f"target density > {threshold:g} x its maximum"
    if c.ground_truth is not None and target is not None:
        fn, _ = c.ground_truth
        truth = np.asarray(fn(jnp.asarray(x)), float)
        diff = total[sel] - truth[sel]
        shift = float(np.sum(rho[sel] * diff) / np.sum(rho[sel]))
        res["truth"] = truth.tolist()
        res["constant_removed"] = shift
        res["max_abs_error"] = float(np.max(np.abs(diff - shift)))
        res["rms_error"] = float(np.sqrt(np.sum(rho[sel] * (diff - shift) ** 2) / np.sum(rho[sel])))  # density-weighted
        res["max_abs_error_minimax"] = float(0.5 * (diff.max() - diff.min()))
        core = rho > 0.1 * rho.max()
        res["max_abs_error_core"] = float(np.max(np.abs(total[core] - truth[core] - shift)))
        res["core_region"] = [float(x[core].min()), float(x[core].max())]
        res["error_range"] = res["sampled_region"]
    return res


def _rmse_unit(target: dict, observable: dict) -> tuple[str | None, float]:
    """The unit an RMSE row is printed in and the factor from the stored value: GPa for stress
    and moduli that the evaluation also reports in GPa, else the target's own unit (none for
    dimensionless ones)."""
    unit = target.get("unit")
    if unit == "kJ/mol/nm^3" and "value_GPa" in observable:
        return "GPa", GPA_PER_KJ_MOL_NM3
    return (None if unit in (None, "1") else unit), 1.0


def _summary(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    t = Table(title=f"difftre evaluate — {out['run']}")
    t.add_column("quantity")
    t.add_column("value", justify="right")

    def add(label: str, value: str) -> None:   # plain text: "[bar]", "[kJ/mol/nm^3]" are not markup
        t.add_row(Text(label), Text(value))
    for name, d in out["targets"].items():
        unit, scale = _rmse_unit(d, out["observables"].get(name, {}))
        start = "" if d["rmse_at_start"] is None else f" (start {d['rmse_at_start'] * scale:.4g})"
        add(f"RMSE {name}" + (f" [{unit}]" if unit else ""), f"{d['rmse'] * scale:.4g}{start}")
        if d.get("error_bar") is not None:
            start = "" if d["error_bar_at_start"] is None else f" (start {d['error_bar_at_start']:.4g})"
            add(f"|error| {name} [bar]", f"{d['error_bar']:.4g}{start}")
    for name, d in out["observables"].items():
        if "value_GPa" in d:
            err = d.get("error_GPa") or {}
            add(f"{name} [GPa]", ", ".join(f"{k} {v:.4g}" + (f" ± {err[k]:.2g}" if k in err else "")
                                                 for k, v in d["value_GPa"].items()))
            for k, v in d.get("moduli_GPa", {}).items():
                add(f"  {k}" + ("" if k.startswith("poisson") else " [GPa]"), f"{v:.4g}")
            continue
        if d["grid"] is None and isinstance(d["value"], list):   # a vector (basin populations): its molecule rows
            continue
        if d["grid"] is None:
            bar = f" ({d['value_bar']:.4g} bar)" if "value_bar" in d else ""
            add(name, f"{d['value']:.5g}{bar}")
    for label, value in summary_rows(out):
        add(label, value)
    pot = out["potential"]
    for name, curve in pot.get("pairs", {}).items():
        if "delta" in curve:
            add(f"Δ {name} = ∫ |u - u_true| dr", f"{curve['delta']:.4g}")
            add(f"max |u - u_true| {name}", f"{curve['max_abs_error']:.4g}")
    if "max_abs_error" in pot:
        a, b = pot["error_range"]
        add(f"max |U - U_true| on [{a:.4g}, {b:.4g}]", f"{pot['max_abs_error']:.4g}")
    if "constant_removed" in pot:
        add("  (density-weighted mean removed)", f"{pot['constant_removed']:.4g}")
        a, b = pot["core_region"]
        add(f"max |U - U_true| on [{a:.4g}, {b:.4g}] (density > 10 % of max)", f"{pot['max_abs_error_core']:.4g}")
    if "delta" in pot:
        a, b = pot["delta_range"]
        add(f"Δ = ∫ |U - U_true| dr on [{a}, {b}]", f"{pot['delta']:.4g}")
    for name, d in out["targets"].items():
        if d.get("rdf_deviation_D") is not None:
            add(f"D {name} = 4πρ∫r²(g - g_ref)²dr", f"{d['rdf_deviation_D']:.4g}")
    ss = out.get("stress_strain")
    if ss:
        unit = ss["unit"]
        for k, v in ss["slopes"].items():
            row = f"{v['value']:.4g} ± {v['error']:.2g}"
            cmp = ss.get("comparison", {}).get(k)
            if cmp is not None:
                row += f" (fluctuation {cmp['fluctuation']:.4g} ± {cmp['fluctuation_error']:.2g})"
            add(f"stress-strain slope {k} [{unit}]", row)
    add("mean kinetic kT", f"{out['mean_kinetic_kT']:.4f}")
    add("snapshots", str(out["snapshots"]))
    add("wall time [s]", f"{out['wall_time_s']:.1f}")
    Console().print(t)


#: the MD trainers' evaluator (learn/registry.py: TrainerKind.evaluator "md")
MD = Evaluator(load, (Section("observables", always, observables),
                      Section("molecule", is_molecule_run, molecule),
                      Section("stress_strain", _stress_strain_on, _stress_strain),
                      Section("temperature", always, temperature),
                      Section("potential", always, potential), COMPARISON), report)
