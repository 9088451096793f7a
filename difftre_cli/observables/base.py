"""What an observable is (the protocol described in observables/__init__.py): the required parts
are abstract or annotated, the optional ones declared here with their defaults, so callers read
them instead of probing for attributes."""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar

from ..errors import UserError


class Observable(abc.ABC):
    """Base of every observable (a small frozen dataclass; see observables/__init__.py)."""

    # required data (dataclass fields of every observable)
    name: str
    depends_on_params: bool
    unit_kind: str          # what its values (or its grid) are: length, angle, pressure, stress, energy, …

    # declared optional parts, with their defaults
    grid: Any = None                        # bin centres of a function-valued observable (n,), or of a 2-D
                                            # one the (n, 2) points of its flattened map; None: a scalar/vector
    reach: float = 0.0                      # neighbour-list radius it needs (pair systems)
    pair: tuple | None = None               # (species a, species b) of a partial observable; None: all pairs
    needs: tuple = ()                       # per-snapshot strain derivatives ("born_stress", "born_stiffness")
    components: tuple | None = None         # names of the entries of a vector value
    combine: ClassVar[Callable | None] = None   # combine(ctx, averages) -> value: a function of averages
    kernel_width: float | None = None       # Gaussian smoothing width a target can be given (smooth_target)
    open_space: ClassVar[bool] = False      # defined without a periodic box (a molecule's internal coordinates)
    # function-valued observables: the unit kind of the values (unit_kind is the grid's) and the
    # symbols of grid and value, the column names of the curve files of `difftre evaluate`
    # (a 2-D observable: one per grid coordinate, then the value's, e.g. ("phi", "psi", "p"))
    value_kind: ClassVar[str] = "dimensionless"
    symbols: ClassVar[tuple[str, ...]] = ("x", "y")

    @abc.abstractmethod
    def snapshot(self, ctx, q):
        """The per-snapshot value (or the pieces ``combine`` takes) from the quantities ``q``."""

    def smooth_target(self, x, y, sigma: float):
        """A target curve (x sorted, internal units) smoothed as this observable smooths its
        histogram, with width ``sigma``: (x', y') on a fine grid of the target's range. Only
        observables with a ``kernel_width`` implement it (targets.py checks that first)."""
        raise NotImplementedError(f"observable {self.name!r} has no smoothing kernel for targets")

    def check_box(self, box: float):
        """Raise a UserError if the observable cannot work in a cubic box of side ``box`` (run by
        config validation): by default, if it needs neighbours beyond half the box."""
        half = 0.5 * box
        if self.reach > half:
            raise UserError(f"observables.{self.name} needs neighbours up to {self.reach:.4g} (its reach), beyond "
                            f"half the box ({half:.4g})", f"lower observables.{self.name}.r_cut / reach, or use "
                            "more particles (system.n_particles)")
