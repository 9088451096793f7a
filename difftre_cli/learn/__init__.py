"""Learning regimes. Each trainer kind (config group ``trainer``) maps to a learner class."""
from .difftre import DiffTRe
from .static import StaticFit

TRAINERS = {"difftre": DiffTRe, "static": StaticFit}
