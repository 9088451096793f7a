"""`difftre compare run=A run=B …` (or `difftre evaluate run=A run=B …`): several evaluated runs
side by side — one table and one overlay figure.

For each run it reads ``evaluation.json`` (written by `difftre evaluate`), ``metrics.csv`` and
``.hydra/config.yaml``; the table lists the trainer, updates, training wall time, per-target
RMSE, and — where the config knows the true potential — Δ = ∫ |U_fit − U_true| dr and the RDF
deviation D = 4πρ ∫ r² (g − g_ref)² dr. The figure overlays the observables with their
targets, the learned potentials with the truth, and the loss against training wall time.
Outputs: ``comparison.json`` and ``comparison.png`` in ``out=DIR`` (default
``runs/compare/<timestamp>``).

The same comparison is an evaluate section (:data:`COMPARISON`): ``evaluate.compare_with=[RUN,
...]`` compares the run being evaluated with those evaluated runs each time it is evaluated,
into ``<run>/comparison/``, and adds the table to its ``evaluation.json``.
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError
from .evaluate_base import Section, evaluate_section
from .plots import plt


def _load(run: Path) -> dict:
    ev = run / "evaluation.json"
    if not ev.is_file():
        raise UserError(f"run={run}: no evaluation.json", f"evaluate it first: difftre evaluate run={run}")
    try:
        evaluation = json.loads(ev.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{ev}: cannot be read ({exc})", f"re-create it: difftre evaluate run={run}") from None
    rows = []
    if (run / "metrics.csv").is_file():
        with open(run / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if (run / ".hydra" / "config.yaml").is_file() else None
    return {"run": str(run), "evaluation": evaluation, "rows": rows, "cfg": cfg}


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def summarize(item: dict) -> dict:
    ev, rows, cfg = item["evaluation"], item["rows"], item["cfg"]
    wall = sum(_float(r.get("sample_time")) + _float(r.get("update_time")) for r in rows) if rows else math.nan
    out = {"run": item["run"], "trainer": None if cfg is None else str(cfg.trainer.kind),
           "updates": len(rows), "train_wall_s": wall,
           "final_loss": _float(rows[-1]["loss"]) if rows else math.nan,
           "rmse": {k: d["rmse"] for k, d in ev.get("targets", {}).items()},
           "rdf_deviation_D": {k: d["rdf_deviation_D"] for k, d in ev.get("targets", {}).items()
                               if d.get("rdf_deviation_D") is not None}}
    pot = ev.get("potential", {})
    for key in ("delta", "max_abs_error"):
        if key in pot:
            out[key] = pot[key]
    if "pairs" in pot:   # mixture: Δ and max |Δu| of each species pair (delta = their sum)
        out["pairs"] = {name: {k: c[k] for k in ("delta", "max_abs_error") if k in c}
                        for name, c in pot["pairs"].items()}
    return out


def _pair_curves(pot: dict) -> dict:
    """{panel name: curve} of an evaluation's potential: one unnamed curve, or one per species
    pair of a mixture (``pairs``)."""
    if "pairs" in pot:
        return {f"pair potential {name}": curve for name, curve in pot["pairs"].items() if "r" in curve}
    return {"pair potential": pot} if "r" in pot else {}


def _plot(items: list[dict], path: Path) -> dict:
    """Write the overlay figure; returns {panel title: number of curves drawn} (for tests)."""
    targets = sorted({k for it in items for k, d in it["evaluation"].get("targets", {}).items()
                      if d.get("grid") and not isinstance(d["grid"][0], list)})   # 2-D maps (phi_psi): no overlay
    pairs = list(dict.fromkeys(k for it in items for k in _pair_curves(it["evaluation"].get("potential", {}))))
    n = len(targets) + len(pairs) + 1
    ncols = n if n <= 4 else 3          # mixtures: one row per state point (3 partial RDFs)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, name in zip(axes, targets):
        shown = False
        for it in items:
            d = it["evaluation"]["targets"].get(name)
            if d is None:
                continue
            if not shown:
                ax.plot(d["grid"], d["target"], "k--", lw=2, label="target")
                shown = True
            ax.plot(d["grid"], d["observable"], lw=1.2, label=_label(it))
        ax.set_title(name)
        ax.legend(fontsize=7)
    for ax, name in zip(axes[len(targets):], pairs):
        truth_drawn = False
        for it in items:
            curve = _pair_curves(it["evaluation"].get("potential", {})).get(name)
            if curve is None:
                continue
            if "truth" in curve and not truth_drawn:
                ax.plot(curve["r"], curve["truth"], "k--", lw=2, label="truth")
                truth_drawn = True
            ax.plot(curve["r"], curve["total"], lw=1.2, label=_label(it))
        ax.set_ylim(-2.0, 3.0)
        ax.set_xlabel("r")
        ax.set_title(name)
        ax.legend(fontsize=7)
    ax = axes[n - 1]
    for it in items:
        t, losses = 0.0, []
        for r in it["rows"]:
            t += _float(r.get("sample_time")) + _float(r.get("update_time"))
            losses.append((t, _float(r.get("loss"))))
        if losses:
            ax.semilogy(*zip(*losses), lw=1.2, marker="o", ms=2, label=_label(it))
    ax.set_xlabel("training wall time [s]")
    ax.set_title("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    panels = {ax.get_title(): len(ax.get_lines()) for ax in axes[:n]}
    plt.close(fig)
    return panels


def _label(it: dict) -> str:
    trainer = None if it["cfg"] is None else it["cfg"].trainer.kind
    return f"{trainer}: {Path(it['run']).name}" if trainer else Path(it["run"]).name


def compare(runs: list[Path], out_dir: Path | None = None) -> dict:
    out_dir = Path(out_dir) if out_dir else Path("runs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    return compare_items([_load(Path(r)) for r in runs], out_dir)


def compare_items(items: list[dict], out_dir: Path) -> dict:
    """The table, ``comparison.json``, ``comparison.png`` and the printed table of ``items``
    (each as :func:`_load` gives it) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = [summarize(it) for it in items]
    (out_dir / "comparison.json").write_text(json.dumps({"runs": table}, indent=1))
    panels = _plot(items, out_dir / "comparison.png")
    _print(table, out_dir)
    return {"runs": table, "out_dir": str(out_dir), "panels": panels}


def _rows(table: list[dict]) -> list[tuple[str, list[str]]]:
    """(metric, one cell per run) for the printed table."""
    fmt = lambda d, k: f"{d[k]:.4g}" if k in d else "-"   # noqa: E731
    out = [("trainer", [str(r["trainer"]) for r in table]), ("updates", [str(r["updates"]) for r in table]),
           ("train wall [s]", [f"{r['train_wall_s']:.1f}" for r in table]),
           ("final loss", [f"{r['final_loss']:.4g}" for r in table])]
    targets = sorted({k for r in table for k in r["rmse"]})
    out += [(f"RMSE {k}", [fmt(r["rmse"], k) for r in table]) for k in targets]
    d_targets = sorted({k for r in table for k in r["rdf_deviation_D"]})
    out += [(f"D {k}" if len(d_targets) > 1 else "D", [fmt(r["rdf_deviation_D"], k) for r in table])
            for k in d_targets]
    pairs = list(dict.fromkeys(p for r in table for p in r.get("pairs", {})))
    for p in pairs:
        out += [(f"Δ {p}", [fmt(r.get("pairs", {}).get(p, {}), "delta") for r in table]),
                (f"max|Δu| {p}", [fmt(r.get("pairs", {}).get(p, {}), "max_abs_error") for r in table])]
    if any("delta" in r for r in table):
        out += [("Δ" + (" (sum)" if pairs else ""), [fmt(r, "delta") for r in table]),
                ("max|ΔU|" + (" (max)" if pairs else ""), [fmt(r, "max_abs_error") for r in table])]
    return out


def _print(table: list[dict], out_dir: Path) -> None:
    """One row per run; with more than 3 targets (several state points, partial RDFs) one row
    per metric and one column per run instead, so that it stays readable."""
    t = Table(title=escape(f"difftre compare — {out_dir}"))
    rows = [(escape(k), [escape(c) for c in cells]) for k, cells in _rows(table)]   # "[s]" is not markup
    names = [escape(Path(r["run"]).name) for r in table]
    if sum(1 for k, _ in rows if k.startswith("RMSE ")) > 3:
        t.add_column("metric")
        for name in names:
            t.add_column(name, justify="right")
        for k, cells in rows:
            t.add_row(k, *cells)
    else:
        t.add_column("run")
        for j, (k, _) in enumerate(rows):
            t.add_column(k, justify="left" if j < 4 else "right")
        for j, name in enumerate(names):
            t.add_row(name, *[cells[j] for _, cells in rows])
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(t)


# ------------------------------------------------------------------------------------------
# the evaluate section
def check_compare_with(value) -> list[Path]:
    """``evaluate.compare_with``: a list of evaluated run directories (UserError naming the entry)."""
    fix = "set evaluate.compare_with=[runs/lj/2026-01-01_12-00-00] (evaluated runs) or []"
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise UserError(f"evaluate.compare_with must be a list of run directories, got {value!r}", fix)
    runs = []
    for i, entry in enumerate(value):
        run = Path(str(entry)).expanduser()
        if not (run / "evaluation.json").is_file():
            raise UserError(f"evaluate.compare_with[{i}]={entry}: not an evaluated run (no evaluation.json)",
                            f"evaluate it first (difftre evaluate run={entry}), or remove it from the list")
        runs.append(run)
    return runs


def _comparison_on(cfg) -> bool:
    return bool(evaluate_section(cfg).get("compare_with"))


def _comparison(r, out: dict) -> None:
    """This run (its results so far, ``out``) beside ``evaluate.compare_with``'s evaluated runs."""
    this = {"run": str(r.run_dir), "evaluation": out, "rows": r.rows, "cfg": r.cfg}
    others = [_load(run) for run in check_compare_with(evaluate_section(r.cfg).get("compare_with"))]
    result = compare_items([this, *others], Path(r.run_dir) / "comparison")
    out["comparison"] = {"runs": result["runs"], "dir": "comparison"}


#: the comparison section of every evaluator (last: it compares what the others computed)
COMPARISON = Section("comparison", _comparison_on, _comparison)
