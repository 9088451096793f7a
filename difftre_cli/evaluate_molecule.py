"""The ``molecule`` section of ``difftre evaluate`` (runs with a topology): how the production
run's conformations compare with the reference's, beyond the per-target RMSEs of the
observables section.

- every ``phi_psi`` observable with a target: the Jensen–Shannon divergence (natural log, 0 for
  equal distributions, at most ln 2) between model and target p(φ, ψ) on the map's grid, and of
  the 1-D φ and ψ marginals (the map summed over the other angle), with the RMSE of the
  marginals;
- every ``basins`` observable: the model's basin populations (± jackknife error) next to the
  target's (a ``difftre targets`` file of the reference).

JS(P, Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M) with M = ½ (P + Q), P and Q the grid's bin probabilities.
"""
from __future__ import annotations

import numpy as np

from .observables.basins import BasinPopulations
from .observables.internal import PhiPsi


def is_molecule_run(cfg) -> bool:
    """The section's rule: the run has a topology."""
    return cfg.get("topology") is not None


def jensen_shannon(p, q) -> float:
    """JS divergence (nats) of two non-negative arrays of the same shape, each normalised to sum 1."""
    p = np.clip(np.asarray(p, float).ravel(), 0.0, None)
    q = np.clip(np.asarray(q, float).ravel(), 0.0, None)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))
    return 0.5 * kl(p) + 0.5 * kl(q)


def marginals(p_flat, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(p(φ), p(ψ)) of a flattened n × n map p(φ_a, ψ_b) (entry a·n + b), each summing to 1 over its bins."""
    p = np.asarray(p_flat, float).reshape(n, n)
    p = p / p.sum()
    return p.sum(1), p.sum(0)


def surface_comparison(model, target, n: int) -> dict:
    """JS divergences of the map and of its marginals, and the marginals' RMSE (bin probabilities)."""
    (fm, sm), (ft, st) = marginals(model, n), marginals(target, n)
    return {"js_phi_psi": jensen_shannon(model, target), "js_phi": jensen_shannon(fm, ft),
            "js_psi": jensen_shannon(sm, st), "rmse_phi_marginal": float(np.sqrt(np.mean((fm - ft) ** 2))),
            "rmse_psi_marginal": float(np.sqrt(np.mean((sm - st) ** 2))), "bins": n}


def molecule(r, out: dict) -> None:
    """Adds ``out["molecule"]``: map divergences and basin populations (module docstring)."""
    c = r.states[0][1]
    result = {}
    for name, t in c.targets.items():
        obs = c.observables[t.observable]
        model = out["observables"][t.observable]
        if isinstance(obs, PhiPsi):
            result[t.observable] = surface_comparison(model["value"], t.value, obs.n_bins)
        elif isinstance(obs, BasinPopulations):
            err = model.get("error")
            result[t.observable] = {
                basin: {"model": float(v), "error": None if err is None else float(err[k]),
                        "reference": float(np.asarray(t.value)[k])}
                for k, (basin, v) in enumerate(zip(obs.components, model["value"]))}
    out["molecule"] = result


def summary_rows(out: dict) -> list[tuple[str, str]]:
    """Rows of the evaluation's summary table for the molecule section."""
    rows = []
    for name, d in out.get("molecule", {}).items():
        if "js_phi_psi" in d:
            rows.append((f"JS {name} (φ,ψ) / φ / ψ [nats]", f"{d['js_phi_psi']:.4f} / {d['js_phi']:.4f} / "
                                                             f"{d['js_psi']:.4f}"))
            continue
        for basin, v in d.items():
            err = "" if v["error"] is None else f" ± {v['error']:.3f}"
            rows.append((f"{name} {basin}", f"{v['model']:.3f}{err} (reference {v['reference']:.3f})"))
    return rows
