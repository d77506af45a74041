"""`autoft estimate` (placeholder until its issue lands)."""
from __future__ import annotations

HELP = "estimate (not built yet)"
EXAMPLES = "  autoft estimate --help\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from autoft.errors import AutoftError

    raise AutoftError("autoft estimate is not built yet", "see the open issues")
