"""The one error type for user errors.

An `AutoftError` is something the user can fix: it prints as one line that says what is wrong and
how to fix it, and the CLI exits with code 2 and no traceback (unless AUTOFT_DEBUG=1).
Anything else that escapes is a bug in autoft and keeps its traceback.
"""
from __future__ import annotations


class AutoftError(Exception):
    """A user error: `what` went wrong, and `fix` says what to do about it."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.strip().rstrip(".")
        self.fix = fix.strip().rstrip(".") if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        # One line, always: newlines in a message would break the one-line contract.
        text = self.what + ("; " + self.fix if self.fix else "")
        return " ".join(text.split()) + "."


class DataError(AutoftError):
    """Bad input data (missing file, wrong columns, too few rows, ...)."""


class DataWarning(UserWarning):
    """Data that trains but deserves a look (imbalance, overlap, truncation)."""
