"""The programs of a multi-state DiffTRe update, compiled while the first trajectories are
featurised (compile_ahead.py).

A single-state update is one program, compiled ahead by its learner (difftre.py:
``compile_step_ahead``). A multi-state update (learn/multistate.py) calls several: each state
point's gradient, preconditioner matrix (Fisher or Gauss–Newton), line-search trials and N_eff,
and the regime's solve, direction and optax step on the sums. Compiled on their first calls they
run one after another on the main thread after the last state point's features, ~1.4 s for
config=lj_mixture on 2 CPU cores (scripts/bench/README.md). :func:`jobs` lists them for the
shapes of one state point's features, known before those features are computed, each program's
arguments worked out from the shapes of the one before (``eval_shape``, traced once: the later
call reuses the trace), so that they match what the regime passes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def request(regime, ks, params, opt_state) -> None:
    """Have the state points ``ks`` of the multi-state ``regime`` that sample their first
    trajectory, and whose programs compile (not followers of a shared program), compile their
    update with these parameters while that trajectory is featurised (DiffTReRegime.on_shapes).
    Not for batched sampling (state_parallel=devices: data on devices of their own)."""
    if regime.state_parallel == "devices":
        return
    for k in ks:
        if k in regime._ahead and regime.subs[k].feats is None:
            regime.subs[k].on_shapes = functools.partial(_start, regime, k, params, opt_state)


def wait(regime) -> None:
    """Block until the programs the state points of ``regime`` compile ahead are compiled."""
    for ahead in regime._ahead.values():
        ahead.wait()


def _start(regime, k: int, params, opt_state, feats) -> None:
    regime._ahead[k].start_jobs(jobs(regime, k, params, opt_state, feats))


def jobs(regime, k: int, params, opt_state, feats):
    """``(program, arguments)`` pairs (CompileAhead.start_jobs) of state point ``k``'s per-update
    programs for features shaped like ``feats``; for the first state point also the programs
    the multi-state ``regime`` runs on the summed results."""
    learner, summed = regime.cs[k].learner, k == 0
    scalar = jax.ShapeDtypeStruct((), jnp.float32)   # lr_scale and the step rule's factor
    yield learner.grad, (params, feats)
    loss, _, _, _, step = learner.grad.eval_shape(params, feats)
    solve = None
    if learner.precondition == "fisher":
        yield learner.fisher, (params, feats)
        solve, matrices = regime._natural, (learner.fisher.eval_shape(params, feats),)
    elif learner.precondition == "gauss_newton":
        yield learner.gauss_newton, (params, feats)
        solve, matrices = regime._gauss_newton, learner.gauss_newton.eval_shape(params, feats)[:2]
    if solve is not None:
        if summed:
            yield solve, (*matrices, step)
        step = solve.eval_shape(*matrices, step)
    if learner.step_rule.searches:
        if summed:
            yield regime._direction, (params, opt_state, step, scalar)
        yield learner.trials, (params, regime._direction.eval_shape(params, opt_state, step, scalar), feats)
    if summed:
        yield regime._apply, (params, opt_state, step, loss, scalar, scalar)
    yield learner.n_eff, (params, feats)
