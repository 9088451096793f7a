"""Iterative Boltzmann inversion (IBI) and Boltzmann inversion (BI) for pair potentials.

IBI (Reith, Pütz & Müller-Plathe, J. Comput. Chem. 24, 1624, 2003; Soper, Chem. Phys. 202,
295, 1996) corrects a tabulated pair potential with the mismatch of the radial
distribution function,

    u_{t+1}(r) = u_t(r) + α k_B T ln(g_t(r) / g_target(r)),

where g_t is measured in a fresh simulation with u_t. Its fixed point is a potential whose
RDF equals the target (by Henderson's theorem, unique up to a constant). Here:

* ``alpha`` (``trainer.alpha``) is the step factor. IBI does not use the optimiser: its step
  is α · ``lr_scale`` (the outer loop's rollback factor), whatever ``optimizer.lr`` says.
* where g_target ≤ ``g_min`` (the core) the correction of the first resolved bin is carried
  inwards unchanged (a constant shift: the core's shape and forces are kept); where only
  the simulated g is ≤ g_min it is clipped to g_min, and every correction is capped at
  ``max_step`` k_B T, so an empty bin never gives an infinite step.
* the correction is smoothed with a Gaussian of width ``smoothing`` (length unit; 0: off),
  normalised over the resolved bins, then interpolated onto the table's points.
* tail: ``shift`` subtracts the correction at the cutoff (the table stays 0 there);
  ``ramp`` also multiplies it by a linear ramp that goes from 1 to 0 over the last
  ``tail_width`` before the cutoff.
* ``pressure_correction: true`` adds the linear ramp ΔV(r) = A (1 − r/r_c) with the simple
  constant amplitude A = −``pressure_amplitude`` · k_B T · sign(P − P_target) of Reith et al.
  (their "simple" scheme, not Wang–Junghans–Kremer's scaled one); P is the virial pressure
  of the same trajectory and P_target the target of the ``pressure`` observable.

The metrics report the same loss as DiffTRe, Σ_k γ_k MSE(⟨O_k⟩, target_k), with the
unweighted averages of the fresh trajectory, so loss curves of the trainers compare;
``n_eff`` is NaN, ``reused`` 0, ``grad_norm`` NaN and ``step_norm`` = ‖Δtable‖.

Boltzmann inversion (initialisation of any trainer) lives in :mod:`.boltzmann`.
"""
from __future__ import annotations

import logging
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors
from ..errors import UserError
from ..observables.pressure import Pressure
from ..potentials.pair import TablePair
from .boltzmann import _core_filled, initial_params, rdf_target
from .regime import Proposal, Regime

log = logging.getLogger("difftre")

# ======================================================================================
class IBIStepAux(NamedTuple):
    correction: jnp.ndarray   # Δu on the table's points (n_points,)
    pressure_shift: jnp.ndarray
    finite: jnp.ndarray


class IBI:
    """The IBI correction as one pure, jit-compiled function of (table, g_t, g_target, P)."""

    def __init__(self, c, tcfg, pair: tuple | None = None):
        model = c.potential.model
        if not isinstance(model, TablePair):
            raise UserError("trainer=ibi needs a tabulated pair model", "add model=table")
        self.model = model
        self.kT = float(c.system.kT)
        self.target, self.rdf = rdf_target(c, pair)   # mixtures: the partial RDF of this species pair
        self.alpha = float(tcfg.get("alpha", 0.3))
        self.smoothing = float(tcfg.get("smoothing", 0.0) or 0.0)
        self.g_min = float(tcfg.get("g_min", 1e-3))
        self.max_step = float(tcfg.get("max_step", 1.0))
        self.tail = str(tcfg.get("tail", "shift"))
        self.tail_width = float(tcfg.get("tail_width", 0.2))
        self.pressure_correction = bool(tcfg.get("pressure_correction", False))
        self.pressure_amplitude = float(tcfg.get("pressure_amplitude", 0.1))
        for key, v in (("alpha", self.alpha), ("max_step", self.max_step), ("g_min", self.g_min)):
            if not (np.isfinite(v) and v > 0):
                raise UserError(f"trainer.{key} must be > 0 (got {v})", f"set e.g. trainer.{key}=0.3")
        if self.smoothing < 0:
            raise UserError(f"trainer.smoothing must be >= 0 (got {self.smoothing})", "set e.g. trainer.smoothing=0.03")
        if self.tail not in ("shift", "ramp"):
            raise UserError(f"trainer.tail: unknown {self.tail!r}", "use shift or ramp")
        if self.tail == "ramp" and not 0 < self.tail_width < model.cutoff - model.r_min:
            raise UserError(f"trainer.tail_width must be in (0, {model.cutoff - model.r_min:g})",
                            "set e.g. trainer.tail_width=0.2")
        self.pressure_target = None
        if self.pressure_correction:
            for t in c.targets.values():
                if isinstance(c.observables[t.observable], Pressure):
                    self.pressure_target = t
            if self.pressure_target is None:
                raise UserError("trainer.pressure_correction=true needs a pressure target",
                                "add a pressure observable and target, e.g. 'observables=[rdf,pressure]' "
                                "'targets=[lj_liquid_rdf,lj_liquid_pressure]'")
        grid = np.asarray(self.rdf.grid, np.float64)
        if grid[0] > model.r_min or grid[-1] < model.cutoff:
            raise UserError(f"observables.{self.rdf.name}: the RDF grid [{grid[0]:.3g}, {grid[-1]:.3g}] must cover "
                            f"the table [{model.r_min:g}, {model.cutoff:g}]", "widen the RDF's r_min/r_max")
        if self.smoothing > 0:
            k = np.exp(-0.5 * ((grid[:, None] - grid[None, :]) / self.smoothing) ** 2)
        else:
            k = np.eye(grid.size)
        self.kernel = k
        self.trace_count = 0
        self._update = jax.jit(self._update_impl)

    def correction(self, g, g_target, pressure, p_target, step):
        """Δu (n_points,) on the table's points for one IBI update of size ``step`` (= α·lr_scale)."""
        dtype = g.dtype
        grid = jnp.asarray(self.rdf.grid, dtype)
        valid = g_target > self.g_min
        ratio = jnp.maximum(g, self.g_min) / jnp.where(valid, g_target, 1.0)
        cap = self.max_step * self.kT
        du = jnp.where(valid, jnp.clip(step * self.kT * jnp.log(ratio), -cap, cap), 0.0)
        kern = jnp.asarray(self.kernel, dtype)
        w = valid.astype(dtype)
        du = jnp.where(valid, (kern @ (du * w)) / jnp.maximum(kern @ w, 1e-30), 0.0)
        du = _core_filled(du, valid)
        r_tab = jnp.asarray(self.model.grid, dtype)
        du_tab = jnp.interp(r_tab, grid, du)
        rc = self.model.cutoff
        shift_p = jnp.zeros((), dtype)
        if self.pressure_correction:
            shift_p = -self.pressure_amplitude * self.kT * jnp.sign(pressure - p_target) * jnp.minimum(step / self.alpha, 1.0)
            du_tab = du_tab + shift_p * (1.0 - r_tab / rc)
        du_tab = du_tab - du_tab[-1]
        if self.tail == "ramp":
            du_tab = du_tab * jnp.clip((rc - r_tab) / self.tail_width, 0.0, 1.0)
        return du_tab, shift_p

    def _update_impl(self, table, g, g_target, pressure, p_target, step):
        self.trace_count += 1
        du, shift_p = self.correction(g, g_target, pressure, p_target, step)
        new = table + du[:-1]
        finite = jnp.all(jnp.isfinite(new))
        return jnp.where(finite, new, table), IBIStepAux(du, shift_p, finite)

    def update(self, table, g, pressure=0.0, lr_scale=1.0, g_target=None):
        """New table and :class:`IBIStepAux` from the measured RDF ``g`` (and pressure) on the
        RDF observable's grid; ``g_target`` defaults to the configured target."""
        dtype = table.dtype
        p_target = 0.0 if self.pressure_target is None else float(self.pressure_target.value)
        g_target = self.target.value if g_target is None else g_target
        return self._update(table, jnp.asarray(g, dtype), jnp.asarray(g_target, dtype),
                            jnp.asarray(pressure, dtype), jnp.asarray(p_target, dtype),
                            jnp.asarray(self.alpha * lr_scale, dtype))


def trajectory_means(c, params, trajectory) -> dict:
    """Unweighted mean over a trajectory's snapshots of every observable (numpy, float64)."""
    feats = c.engine.featurize(trajectory)
    vals = c.engine.snapshot_observables_jit(params, feats)
    return {k: np.asarray(v, np.float64).mean(0) for k, v in vals.items()}


def target_losses(c, means: dict) -> dict:
    """γ_k (weighted) MSE(mean_k, target_k) per target, DiffTRe's loss (Target.loss), in float64."""
    return {name: float(t.loss(np.asarray(means[t.observable]), np, np.float64)) for name, t in c.targets.items()}


def _get_table(params, pair):
    return params["model"]["table"] if pair is None else params["model"][pair]["table"]


def _with_table(params, pair, table):
    if pair is None:
        return {**params, "model": {**params["model"], "table": table}}
    return {**params, "model": {**params["model"], pair: {**params["model"][pair], "table": table}}}


class IBIRegime(Regime):
    """IBI's update for the outer loop: sample a fresh trajectory with the current table
    (continuing the simulation state), measure g_t (and P), apply the IBI correction.
    Mixtures: one table per species pair, each corrected with its own partial RDF."""

    def __init__(self, components, store, tcfg):
        self.c = components
        self.store = store
        # (parameter key of the table, IBI of its RDF): one channel, or one per species pair
        self.channels = [(t.key, IBI(components, tcfg, pair=t.species)) for t in components.potential.pair_terms()] \
            or [(None, IBI(components, tcfg))]   # not a pair potential: IBI refuses it
        self.ibi = self.channels[0][1]
        self.init_from = tcfg.get("init_from", None)
        self.state = self.nbrs = None
        self.n_traj = 0

    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.c, k_param, self.init_from)
        self.state, self.nbrs = self.c.sampler.init(k_sim, params, ahead=self.c.sampler.cfg.n_snapshots)
        return params, ()

    def checkpoint(self):
        import json

        return ({"sim_state": self.state, "neighbor": self.nbrs},
                {"n_trajectories": self.n_traj, "neighbor_capacities": json.dumps(neighbors.capacities(self.nbrs)),
                 **self.c.engine.capacity_attrs()})

    def templates(self, attrs):
        import json

        nbrs = neighbors.placeholder(self.nbrs.idx.shape[0], json.loads(attrs["neighbor_capacities"]),
                                     self.nbrs.reference_position.dtype)
        return {"sim_state": self.state, "neighbor": nbrs}

    def restore(self, trees, attrs):
        self.state, self.nbrs = trees["sim_state"], trees["neighbor"]
        self.c.engine.set_capacity(attrs)
        self.n_traj = int(attrs["n_trajectories"])

    def rejected(self):
        pass

    def sample_means(self, params):
        """A fresh trajectory from the last state (stored) and its observables' means, or None
        if the simulation was unstable (then the state does not advance)."""
        trajectory = self.sample_trajectory(params)
        return None if trajectory is None else trajectory_means(self.c, params, trajectory)

    def sample_trajectory(self, params):
        """A fresh trajectory from the last state, stored, the state advanced to its end; None if
        the simulation was unstable (then the state does not advance)."""
        c = self.c
        res = c.sampler.sample(params, self.state, self.nbrs, first=(self.n_traj == 0))
        if not res.ok:
            log.warning("simulation unstable (%s)", res.reason)
            if self.n_traj == 0:
                raise UserError("the simulation with the initial parameters is unstable",
                                "lower simulator.dt, check the prior and the initial structure")
            return None
        traj = jax.tree_util.tree_map(np.asarray, res.trajectory)
        self.store.write_trajectory(self.n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units,
                                    species=c.system.species, species_names=c.system.species_names)
        self.state, self.nbrs, self.n_traj = res.state, res.neighbor, self.n_traj + 1
        return res.trajectory

    def corrections(self, params, means, lr_scale: float) -> dict:
        """{table key: (Δu on the table's points, finite)} of every channel."""
        out = {}
        for key, ibi in self.channels:
            p = means[ibi.pressure_target.observable] if ibi.pressure_target is not None else 0.0
            _, aux = ibi.update(_get_table(params, key), means[ibi.rdf.name], p, lr_scale)
            out[key] = (aux.correction, bool(aux.finite))
        return out

    @staticmethod
    def apply(params, corrections: dict):
        """Parameters with every table corrected; None if a correction is not finite."""
        for key, (du, finite) in corrections.items():
            if not finite:
                return None
            params = _with_table(params, key, _get_table(params, key) + du[:-1])
        return params

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        c = self.c
        nan = float("nan")
        t0 = time.perf_counter()
        means = self.sample_means(params)
        sample_time = time.perf_counter() - t0
        event, new_params, losses, step_norm = "", params, {name: nan for name in c.targets}, nan
        update_time = 0.0
        if means is None:
            event = "unstable_simulation"
        else:
            t1 = time.perf_counter()
            losses = target_losses(c, means)
            corr = self.corrections(params, means, lr_scale)
            updated = jax.block_until_ready(self.apply(params, corr))
            update_time = time.perf_counter() - t1
            step_norm = float(np.sqrt(sum(float(jnp.sum(du ** 2)) for du, _ in corr.values())))
            if updated is None or not np.isfinite(sum(losses.values())):
                event = "non_finite_loss"
            else:
                new_params = updated
        loss = nan if event else float(sum(losses.values()))
        fields = {"loss": loss, **{f"loss_{k}": (nan if event else v) for k, v in losses.items()},
                  "n_eff": nan, "reused": 0, "sample_time": sample_time, "update_time": update_time,
                  "grad_norm": nan, "step_norm": step_norm, "n_trajectories": self.n_traj}
        return Proposal(new_params, opt_state, fields, event, means is not None)
