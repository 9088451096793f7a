"""Learning regimes. Each trainer kind (config group ``trainer``) maps to a learner class."""
from .difftre import DiffTRe

TRAINERS = {"difftre": DiffTRe}
