"""Errors a user can cause. The CLI maps them to exit code 2 and a one-line message."""
from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input (config key, file, unit, unstable simulation) with a fix the user can apply.

    The message names the offending key or file and what to do; no traceback is shown.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")


def fail(message: str) -> None:
    """End the command: ``difftre: error: MESSAGE`` on stderr, exit code 2 (no traceback)."""
    print(f"difftre: error: {message}", file=sys.stderr)
    raise SystemExit(2)
