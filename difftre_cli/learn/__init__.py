"""Learning regimes: one update of the shared outer loop (train.Trainer) at a time — DiffTRe
(difftre.py, difftre_regime.py), direct AD (direct_ad.py), IBI (ibi.py), several state points (multistate.py) and
the 0 K fit (static.py, static_regime.py). registry.py maps each ``trainer.kind`` to its regime,
config checks and evaluator."""
