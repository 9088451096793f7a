"""The interleaved regime: updates of several regimes alternate on one set of parameters
(interleave.py composes the entries; train.Trainer builds one regime per entry on its own
components and hands them here).

The loop's optimiser state is the tuple of the entries' states; update k goes to entry
:func:`entry_at`, which proposes from the current parameters with its own optimiser
state and the loop's learning-rate scale times its ``weight``. A rejected update is rolled back
by the loop as any other (every entry forgets its predictions). Metrics: ``loss`` and
``trainer`` (the entry that made the update) plus the entry's own columns prefixed with its
trainer's name (``force_matching.force_rmse``, ``difftre.n_eff`` …); ``reused``, the number of
trajectories and the checkpointed state are the entries' own.

The entries' optimiser states are made by their own ``init`` from their own initial
parameters; optax states depend only on the parameters' structure, which all entries share.
"""
from __future__ import annotations

from .regime import Proposal, Regime


def entry_at(entries, update: int) -> int:
    """The index of the entry (each with ``steps`` consecutive updates per cycle) that makes
    update ``update`` (0-based) of the run."""
    k = update % sum(e.steps for e in entries)
    for i, e in enumerate(entries):
        if k < e.steps:
            return i
        k -= e.steps
    raise AssertionError("unreachable")


def rows_by_trainer(rows: list[dict], also: tuple = ()) -> dict:
    """{trainer: its rows} of an interleaved run's metrics: each row's own (prefixed) columns
    unprefixed, with ``update``, ``loss`` and the columns ``also``."""
    out = {}
    for r in rows:
        name = r["trainer"]
        own = {k.split(".", 1)[1]: v for k, v in r.items() if k.startswith(f"{name}.")}
        out.setdefault(name, []).append({"update": r["update"], **own, "loss": r["loss"],
                                         **{k: r.get(k) for k in also}})
    return out


class InterleavedRegime(Regime):
    def __init__(self, entries, regimes):
        self.entries, self.regimes = entries, regimes
        self.count = 0   # updates proposed (the position in the cycle)
        self.failure_hint = " / ".join(dict.fromkeys(r.failure_hint for r in regimes))

    def init(self, key):
        params, states = None, []
        for r in self.regimes:
            p, o = r.init(key)
            params = p if params is None else params
            states.append(o)
        return params, tuple(states)

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        i = entry_at(self.entries, self.count)
        self.count += 1
        entry = self.entries[i]
        prop = self.regimes[i].propose(params, opt_state[i], lr_scale * entry.weight)
        states = list(opt_state)
        states[i] = prop.opt_state
        fields = {"loss": prop.fields.get("loss", float("nan")), "trainer": entry.name,
                  **{f"{entry.name}.{k}": v for k, v in prop.fields.items()}}
        if "reused" in prop.fields:
            fields["reused"] = prop.fields["reused"]
        return Proposal(prop.params, tuple(states), fields, prop.event, prop.fresh_sample)

    def checkpoint(self) -> tuple[dict, dict]:
        trees, attrs = {}, {"interleave_count": self.count}
        for i, r in enumerate(self.regimes):
            t, a = r.checkpoint()
            trees.update({f"e{i}.{k}": v for k, v in t.items()})
            attrs.update({f"e{i}.{k}": v for k, v in a.items()})
            if "n_trajectories" in a:
                attrs["n_trajectories"] = a["n_trajectories"]
        return trees, attrs

    def _own(self, d: dict, i: int) -> dict:
        prefix = f"e{i}."
        return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}

    def templates(self, attrs: dict) -> dict:
        out = {}
        for i, r in enumerate(self.regimes):
            out.update({f"e{i}.{k}": v for k, v in r.templates(self._own(attrs, i)).items()})
        return out

    def restore(self, trees: dict, attrs: dict) -> None:
        self.count = int(attrs["interleave_count"])
        for i, r in enumerate(self.regimes):
            r.restore(self._own(trees, i), self._own(attrs, i))

    def rejected(self) -> None:
        for r in self.regimes:
            r.rejected()

    def trajectory_names(self):
        for r in self.regimes:
            names = r.trajectory_names()
            if names is not None:
                return names
        return None

    def close(self) -> None:
        for r in self.regimes:
            r.close()

    def summary(self, rows: list[dict], params) -> dict:
        own, out = rows_by_trainer(rows, also=("event",)), {}
        for e, r in zip(self.entries, self.regimes):
            out.update({f"{e.name}: {k}": v for k, v in r.summary(own.get(e.name, []), params).items()})
        return out
