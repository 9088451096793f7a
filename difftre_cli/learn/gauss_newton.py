"""The Gauss–Newton (Levenberg–Marquardt) step of the reweighting learner.

DiffTRe's loss is a sum of squares, L(θ) = Σ_k γ_k mean(w_k (⟨O_k⟩_θ − Õ_k)²) = ‖r(θ)‖², with
residuals r_j = √(γ w_j / n) (⟨O⟩_j − Õ_j) (:meth:`targets.Target.residuals`). With J = ∂r/∂θ
on the stored snapshots (through the reweighting weights and the θ-dependent observables, as
the gradient), the step d solves (JᵀJ + λ I) d = Jᵀr = ½ ∇L, so that θ − d is the damped
Newton step of the quadratic model of L: a learning rate of 1 takes the whole step, and the step
rule (step_rule.py) can scale it. For a pair potential and RDF targets this is the reweighting
form of inverse Monte Carlo (Lyubartsev & Laaksonen, Phys. Rev. E 52, 3730 (1995)): J is the
cross-correlation of the pair-distance histograms with ∂U/∂θ; the Fisher step (difftre.py) is
its IBI-like counterpart.

λ = ``damping`` × tr(JᵀJ) / min(m, P): a fraction of the mean non-zero eigenvalue of JᵀJ (m
residuals, P parameters). Two algebraically equal forms: with P ≤ :data:`MAX_PRIMAL` the P × P
system (several state points sum their JᵀJ and m, learn/multistate.py); with more parameters (a
network) d = Jᵀ (JJᵀ + λ I)⁻¹ r, an m × m system, one state point only.

J is formed the cheaper of two ways (:func:`residual_jacobian`). The observables reach θ only
through a few per-snapshot quantities q_s (U_θ, the virial, Born terms: the engine's
``snapshot_quantities``), so J = ∂r/∂q · ∂q/∂θ, with ∂q_s/∂θ from one small Jacobian per stored
state (as many passes as q_s has entries: 2 for a pair model against RDFs and pressure) and ∂r/∂q
from passes over the cheap reweighting alone. When q_s has more entries than the residuals
(diamond's Born stiffness against three elastic constants), J comes directly from m reverse
(or P forward) passes through the whole loss. Passes run :data:`BATCH` basis vectors at a time
(``lax.map``), so memory stays a few times the loss's.

``shrinkage`` a (pair potentials with RDF targets) uses J_a = (1 − a) J + a J_loc instead of J,
in the matrix and in the gradient Jᵀr alike. J is a covariance of per-snapshot RDFs with ∂U/∂θ
over S snapshots; for P spline values against m RDF bins it is mostly noise on a small system
(config=lj_mixture: a 1/16 step from the true potential raised the fresh loss 0.005 → 0.019 →
0.028; scripts/bench/README.md). J_loc (:func:`local_response_jacobian`) is the noise-free
Jacobian that IBI assumes, ∂g_ab(r)/∂θ = −β g_target,ab(r) ∂u_ab(r)/∂θ, exact for a dilute gas
(g = e^{−βu}) and blind to the liquid's correlations. Shrinking a noisy sample estimate towards
a structured one trades variance for bias (Ledoit & Wolf, J. Multivar. Anal. 88, 365 (2004));
the fixed point, r = 0 where the model can reach it, is the same for every a.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..errors import UserError
from ..observables.rdf import RDF

#: the most parameters for which the P × P form is used (and several state points are allowed)
MAX_PRIMAL = 4096
#: basis vectors per batched forward/reverse pass when forming J
BATCH = 4


def residuals(targets: dict, preds: dict, dtype) -> jnp.ndarray:
    """All targets' residuals in one vector (‖r‖² is the loss)."""
    return jnp.concatenate([jnp.ravel(t.residuals(preds[t.observable], jnp, dtype)) for t in targets.values()])


def jacobian(fn, flat):
    """(fn(flat), J = ∂fn/∂flat) for ``fn``: (P,) → (m,), by the cheaper of P forward or m
    reverse passes, batched."""
    r = fn(flat)
    m, p = r.shape[0], flat.shape[0]
    if p <= m:
        basis = jnp.eye(p, dtype=flat.dtype)
        cols = jax.lax.map(lambda v: jax.jvp(fn, (flat,), (v,))[1], basis, batch_size=BATCH)   # (P, m)
        return r, cols.T
    _, vjp = jax.vjp(fn, flat)
    rows = jax.lax.map(lambda e: vjp(e)[0], jnp.eye(m, dtype=r.dtype), batch_size=BATCH)       # (m, P)
    return r, rows


def residual_jacobian(engine, targets: dict, params, feats):
    """(r, J = ∂r/∂θ) of the targets' residuals on the stored snapshots ``feats``."""
    flat, unravel = ravel_pytree(params)
    p = flat.size
    per_state = ravel_pytree(jax.eval_shape(engine.snapshot_quantities, params, feats.r))[0].size
    per_state //= feats.u_ref.shape[0]
    m = jax.eval_shape(lambda p_: residuals(targets, engine.predict(p_, feats)[0], flat.dtype), params).shape[0]
    if min(p, per_state) >= min(p, m):
        return jacobian(lambda th: residuals(targets, engine.predict(unravel(th), feats)[0], flat.dtype), flat)
    q_flat, q_unravel = ravel_pytree(engine.snapshot_quantities(params, feats.r))

    def of_q(qf):
        return residuals(targets, engine.predict_from_quantities(q_unravel(qf), feats)[0], flat.dtype)
    r, j_rq = jacobian(of_q, q_flat)                                                   # (m, S · per_state)
    one = engine.quantity_fn()
    per_snapshot = jax.jacfwd if p <= per_state else jax.jacrev
    j_q = engine.over_states(lambda r_s: per_snapshot(lambda th: one(unravel(th), r_s))(flat), feats.r)
    j_qt = jnp.concatenate([leaf.reshape(-1, p) for leaf in jax.tree_util.tree_leaves(j_q)])   # ravel order of q
    return r, j_rq @ j_qt


def damping_value(trace, m, p: int, damping: float):
    """λ: ``damping`` × the mean non-zero eigenvalue scale tr / min(m, P)."""
    return damping * trace / jnp.minimum(jnp.asarray(m, trace.dtype), p)


def solve_primal(jtj, grads, m, damping: float):
    """d with (JᵀJ + λ I) d = ½ g (``grads`` a pytree, g its flat vector; ``jtj`` and ``m``
    possibly summed over state points)."""
    g, unravel = ravel_pytree(grads)
    lam = damping_value(jnp.trace(jtj), m, g.size, damping)
    d = jnp.linalg.solve(jtj + lam * jnp.eye(g.size, dtype=jtj.dtype), 0.5 * g)
    return unravel(d.astype(g.dtype))


def solve_dual(jac, r, grads, damping: float):
    """The same d as :func:`solve_primal` from the m × m system: Jᵀ (JJᵀ + λ I)⁻¹ r."""
    g, unravel = ravel_pytree(grads)
    jjt = jac @ jac.T
    lam = damping_value(jnp.trace(jjt), r.shape[0], g.size, damping)
    d = jac.T @ jnp.linalg.solve(jjt + lam * jnp.eye(r.shape[0], dtype=jjt.dtype), r)
    return unravel(d.astype(g.dtype))


def direction(jac, r, grads, damping: float):
    """The Gauss–Newton direction for one state point, in whichever form is smaller."""
    if jac.shape[1] <= MAX_PRIMAL:
        return solve_primal(jac.T @ jac, grads, r.shape[0], damping)
    return solve_dual(jac, r, grads, damping)


def check_summable(n_params: int) -> None:
    """Several state points sum P × P matrices: refuse models too large for that."""
    if n_params > MAX_PRIMAL:
        raise UserError(f"trainer.precondition=gauss_newton with several state points sums P x P matrices, and "
                        f"this model has P = {n_params} parameters (at most {MAX_PRIMAL})",
                        "use trainer.precondition=none (Adam) for a network with several state points")


def _local_terms(potential, observables, targets: dict) -> list:
    """[(target, observable, pair term or None)]: the pair function each RDF target responds to
    locally (a partial RDF: its species pair's; one species: the only one); None for the others."""
    terms = potential.pair_terms()
    out = []
    for t in targets.values():
        obs, term = observables[t.observable], None
        if isinstance(obs, RDF) and terms:
            if obs.pair is None:
                term = terms[0] if len(terms) == 1 else None
            else:
                term = next((x for x in terms if x.species in (tuple(obs.pair), tuple(obs.pair)[::-1])), None)
        out.append((t, obs, term))
    return out


def check_shrinkage(shrinkage: float, precondition: str, engine, targets: dict) -> None:
    """``trainer.shrinkage`` > 0 with the Gauss–Newton step needs a local response (UserError).
    Like ``damping``, it is a parameter of that step and unused by the other preconditioners."""
    if shrinkage > 0 and precondition == "gauss_newton":
        check_local_response(engine.potential, engine.observables, targets)


def check_local_response(potential, observables, targets: dict) -> None:
    """``trainer.shrinkage`` needs a pair potential and an RDF target it acts on (UserError)."""
    if not any(term is not None for _, _, term in _local_terms(potential, observables, targets)):
        raise UserError("trainer.shrinkage > 0 shrinks J towards IBI's local response of an RDF to its pair "
                        "potential, and this run has no RDF target on a pair potential's pair",
                        "set trainer.shrinkage=0 (or use a pair model with RDF targets)")


def local_response_jacobian(potential, observables, targets: dict, params, beta):
    """J_loc (m, P): the targets' residuals' Jacobian in the local response of an RDF to its pair
    potential, ∂g(r)/∂θ = −β g_target(r) ∂u(r)/∂θ (module doc; rows in :func:`residuals`'
    order, zero for targets without such a response)."""
    flat, unravel = ravel_pytree(params)
    rows = []
    for t, obs, term in _local_terms(potential, observables, targets):
        value = jnp.asarray(t.value, flat.dtype)
        if term is None:
            rows.append(jnp.zeros((jnp.ravel(t.residuals(value, jnp, flat.dtype)).shape[0], flat.size), flat.dtype))
            continue
        grid = jnp.asarray(obs.grid, flat.dtype)
        u0 = jax.lax.stop_gradient(term.u(params, grid))

        def res(th, t=t, term=term, grid=grid, value=value, u0=u0):
            du = term.u(unravel(th), grid) - u0
            du = jnp.where(jnp.isfinite(du), du, 0.0)          # inside a prior's hard core
            return jnp.ravel(t.residuals(value * (1.0 - beta * du), jnp, flat.dtype))
        rows.append(jax.jacfwd(res)(flat))
    return jnp.concatenate(rows)


def shrunk(jac, j_loc, shrinkage: float):
    """(1 − a) J + a J_loc."""
    return (1.0 - shrinkage) * jac + shrinkage * j_loc.astype(jac.dtype)


def gradient(jtr, like):
    """2 Jᵀr (``jtr``) as a pytree shaped like ``like``: ∇L for the unshrunk J, the shrunk model's otherwise."""
    flat, unravel = ravel_pytree(like)
    return unravel((2 * jtr).astype(flat.dtype))
