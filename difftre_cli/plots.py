"""PNG plots of an evaluation: observables vs targets, training curves, learned potential."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .learn.interleaved import rows_by_trainer  # noqa: E402
from .units import GPA_PER_KJ_MOL_NM3  # noqa: E402


def _component_bars(ax, name: str, d: dict, ev: dict) -> None:
    """Target and learned bars per named component; stress and moduli in GPa where the
    evaluation reports them so (real units), else in the target's unit."""
    gpa = "value_GPa" in ev.get("observables", {}).get(name, {}) and d.get("unit") == "kJ/mol/nm^3"
    scale = GPA_PER_KJ_MOL_NM3 if gpa else 1.0
    obs = np.atleast_1d(np.asarray(d["observable"], float)) * scale
    tgt = np.broadcast_to(np.asarray(d["target"], float), obs.shape) * scale
    x = np.arange(obs.size)
    ax.bar(x - 0.2, tgt, 0.4, color="k", label="target")
    ax.bar(x + 0.2, obs, 0.4, color="C1", label="learned")
    ax.set_xticks(x, d.get("components") or [str(i) for i in x])
    unit = "GPa" if gpa else d.get("unit")
    if unit:
        ax.set_ylabel(f"{name} [{unit}]")


def _series(rows: list[dict]) -> dict:
    """{label: rows} of the training curves: one unlabelled series, or (interleaved trainers,
    a ``trainer`` column) one per trainer with its own columns unprefixed."""
    if not rows or "trainer" not in rows[0]:
        return {None: rows}
    return rows_by_trainer(rows)


def plot_all(run_dir: Path, ev: dict, rows: list[dict]) -> list[Path]:
    """Every plot of an evaluated run: one per target, the training curves, the stress–strain
    check, the learned potential; the files written."""
    paths = []
    for name, d in ev["targets"].items():
        if d["grid"] is not None and np.ndim(d["grid"]) == 2:   # a 2-D map (phi_psi): heat maps
            paths.append(plot_surface(run_dir, name, d))
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if d["grid"] is not None:
            ax.plot(d["grid"], d["target"], "k-", lw=2, label="target")
            ax.plot(d["grid"], d["observable"], "C1--", label=f"learned (RMSE {d['rmse']:.3g})")
            ax.set_xlabel(f"x [{d.get('grid_unit', ev['units']['length'])}]")
        elif np.ndim(d["target"]) or np.ndim(d["observable"]):   # named components (stress, stiffness)
            _component_bars(ax, name, d, ev)
        else:
            ax.bar(["target", "learned"], [d["target"], d["observable"]], color=["k", "C1"])
        ax.set_title(name)
        if ax.get_legend_handles_labels()[0]:   # the scalar bar chart has no labelled artists
            ax.legend()
        paths.append(_save(fig, run_dir / f"{name}.png"))
    if rows:
        paths.append(plot_training(run_dir, rows))
    if ev.get("stress_strain"):
        paths.append(plot_stress_strain(run_dir, ev["stress_strain"]))
    pot = ev["potential"]
    if "x" in pot:   # one-body potential u(x) (the double well)
        paths.append(plot_external(run_dir, ev))
    elif "r" in pot or "pairs" in pot:   # a many-body potential has no pair curve
        paths.append(plot_pair_potential(run_dir, ev))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training(run_dir: Path, rows: list[dict]) -> Path:
    """Loss, N_eff (or the validation loss) and wall time per update of the logged rows."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    # the reweighting trainers log N_eff and sampling/update times; force matching its
    # validation loss and epoch time (columns differ by trainer: plot what the rows have);
    # interleaved trainers: one line per trainer, from its own (prefixed) columns
    for label, own in _series(rows).items():
        upd = [r["update"] for r in own]
        axes[0].semilogy(upd, [r["loss"] for r in own], label=label)
        middle = next((k for k in ("n_eff", "loss_validation") if k in own[0]), None)
        if middle:
            name = {"n_eff": "N_eff", "loss_validation": "validation loss"}[middle]
            axes[1].plot(upd, [r[middle] for r in own], label=f"{label}: {name}" if label else None)
            axes[1].set_title(name if label is None else "N_eff / validation loss")
        if "epoch_time" in own[0]:
            axes[2].plot(upd, [r["epoch_time"] for r in own], label=label)
        elif "update_time" in own[0]:
            axes[2].plot(upd, [r["update_time"] + r.get("sample_time", 0.0) for r in own], label=label)
    if "N_eff" in axes[1].get_title():   # on its scale, 0 to S: a trajectory reweighted at its own
        axes[1].set_ylim(bottom=0.0)       # parameters shows a flat line at S, not float noise
        axes[1].ticklabel_format(axis="y", useOffset=False)
    axes[0].set_title("loss")
    axes[2].set_title("wall time per update [s]")
    for a in axes:
        a.set_xlabel("update")
        if a.get_legend_handles_labels()[0]:
            a.legend()
    return _save(fig, run_dir / "training.png")


def plot_pair_potential(run_dir: Path, ev: dict) -> Path:
    """The learned u(r) (prior + model) with the prior and, where known, the ground truth; one
    curve per species pair for a mixture."""
    pot = ev["potential"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    curves = pot["pairs"] if "pairs" in pot else {"": pot}   # a mixture: one curve per species pair
    lo = 0.0
    for k, (name, cv) in enumerate(curves.items()):
        tag = f" {name}" if name else ""
        if not name or "truth" not in cv:
            ax.plot(cv["r"], cv["prior"], ":", color="gray", label=f"prior{tag}")
        if "truth" in cv:
            ax.plot(cv["r"], cv["truth"], "-", color=f"C{k}" if name else "k", lw=2, alpha=0.5 if name else 1.0,
                    label=f"ground truth{tag}")
        ax.plot(cv["r"], cv["total"], "--", color=f"C{k}" if name else "C1", label=f"learned{tag} (prior + model)")
        lo = min(lo, np.min(cv["total"]), np.min(cv.get("truth", cv["total"])))
    ax.set_ylim(lo - 0.5, 3.0)
    ax.set_xlabel(f"r [{ev['units']['length']}]")
    ax.set_ylabel(f"u(r) [{ev['units']['energy']}]")
    ax.legend()
    return _save(fig, run_dir / "potential.png")


def plot_stress_strain(run_dir: Path, ss: dict) -> Path:
    """The stress–strain points (± standard error), the fitted polynomial, and the tangent the
    stress-fluctuation stiffness predicts at zero strain (stress_strain.py)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = (("e1", axes[0], (("xx", lambda s: s[0], "B11"), ("(yy+zz)/2", lambda s: 0.5 * (s[1] + s[2]), "B12"))),
              ("e4", axes[1], (("yz", lambda s: s[3], "B44"),)))
    s0, s0e = ss["zero_strain_stress"], ss["zero_strain_stress_error"]
    for mode, ax, comps in panels:
        pts = sorted([(0.0, s0, s0e)] + [(r["strain"], r["stress"], r["stress_error"]) for r in ss["runs"]
                                         if r["mode"] == mode], key=lambda p: p[0])
        e = np.array([p[0] for p in pts])
        fine = np.linspace(e.min(), e.max(), 100)
        for k, (label, f, b) in enumerate(comps):
            y, yerr = np.array([f(p[1]) for p in pts]), np.array([f(p[2]) for p in pts])
            ax.errorbar(100 * e, y, yerr=yerr, fmt="o", color=f"C{k}", capsize=3, label=f"σ_{label}")
            w = 1.0 / np.maximum(yerr, 1e-12)
            coef = np.polyfit(e, y, ss["fit_degree"], w=w)
            ax.plot(100 * fine, np.polyval(coef, fine), "-", color=f"C{k}", lw=1,
                    label=f"fit: {b} = {ss['slopes'][b]['value']:.4g} ± {ss['slopes'][b]['error']:.2g}")
            cmp = ss.get("comparison", {}).get(b)
            if cmp is not None:
                y0 = np.polyval(coef, 0.0)
                ax.plot(100 * fine, y0 + cmp["fluctuation"] * fine, ":", color=f"C{k}", lw=2,
                        label=f"fluctuation {b} = {cmp['fluctuation']:.4g} ± {cmp['fluctuation_error']:.2g}")
        ax.axhline(0.0, color="gray", lw=0.5)
        ax.set_xlabel(f"{mode} strain [%]")
        ax.set_ylabel(f"stress [{ss['unit']}]")
        ax.legend(fontsize=7)
    return _save(fig, run_dir / "stress_strain.png")


def plot_external(run_dir: Path, ev: dict) -> Path:
    """u(x) learned (shifted by the removed constant) vs true vs prior, with the sampled region."""
    pot = ev["potential"]
    x = np.asarray(pot["x"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, pot["prior"], ":", color="gray", label="prior")
    shift = pot.get("constant_removed", 0.0)
    if "truth" in pot:
        ax.plot(x, pot["truth"], "k-", lw=2, label="ground truth")
    label = "learned (prior + model)" + (f" − {shift:.3g}" if shift else "")
    if "max_abs_error" in pot:
        label += f"\nmax |Δu| = {pot['max_abs_error']:.3g} in the sampled region"
    ax.plot(x, np.asarray(pot["total"]) - shift, "C1--", label=label)
    ref = np.asarray(pot.get("truth", pot["total"]))
    if "sampled_region" in pot:
        a, b = pot["sampled_region"]
        ax.axvspan(a, b, color="C0", alpha=0.08, label="sampled region")
        inside = (x >= a) & (x <= b)
        lo = float(np.min(ref[inside]))
    else:
        lo = float(np.min(ref))
    ax.set_ylim(lo - 1.0, lo + 8.0)
    ax.set_xlabel(f"x [{ev['units']['length']}]")
    ax.set_ylabel(f"u(x) [{ev['units']['energy']}]")
    ax.legend(fontsize=7)
    return _save(fig, run_dir / "potential.png")


def plot_surface(run_dir: Path, name: str, d: dict) -> Path:
    """A 2-D target (a grid of (x1, x2) pairs, value flattened x1-major; e.g. phi_psi) as free-
    energy surfaces F/kT = −ln p, shifted to a minimum of 0 and drawn up to 10 kT: the target
    next to the learned map, one colour scale; points where p = 0 stay blank. Angles in degrees."""
    grid = np.asarray(d["grid"], float)
    unit = d.get("grid_unit", "")
    scale, unit = (180.0 / np.pi, "deg") if unit == "rad" else (1.0, unit)
    x1, x2 = np.unique(grid[:, 0]) * scale, np.unique(grid[:, 1]) * scale
    symbols = d.get("symbols") or ("x1", "x2", "p")
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4), sharey=True)
    for ax, key, title in ((axes[0], "target", "target"), (axes[1], "observable", f"learned (RMSE {d['rmse']:.3g})")):
        p = np.asarray(d[key], float).reshape(len(x1), len(x2))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(p > 0, -np.log(np.where(p > 0, p, 1.0)), np.nan)
        f = f - np.nanmin(f) if np.any(np.isfinite(f)) else f
        mesh = ax.pcolormesh(x1, x2, f.T, shading="nearest", vmin=0.0, vmax=10.0, cmap="viridis")
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_xlabel(f"{symbols[0]} [{unit}]")
    axes[0].set_ylabel(f"{symbols[1]} [{unit}]")
    fig.colorbar(mesh, ax=axes, label=f"F / kT = −ln {symbols[-1]} (minimum 0)")
    p = run_dir / f"{name}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
