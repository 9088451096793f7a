"""Learning regimes. Each trainer kind (config group ``trainer``) maps to the learner class
that ``assemble`` builds: DiffTRe's learner also featurizes trajectories and computes their
observables for ``evaluate``, IBI and the trainer comparison, so every kind uses it; the
update itself is the regime that ``train.make_regime`` picks (difftre.py, direct_ad.py, ibi.py)."""
from .difftre import DiffTRe
from .static import StaticFit

TRAINERS = {"difftre": DiffTRe, "direct_ad": DiffTRe, "ibi": DiffTRe, "static": StaticFit}
