"""difftre: learn interaction potentials top-down from observables with DiffTRe."""

__version__ = "0.1.0"
