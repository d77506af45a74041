"""`autoft advise` (placeholder until its issue lands)."""
from __future__ import annotations

HELP = "advise (not built yet)"
EXAMPLES = "  autoft advise --help\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from autoft.errors import AutoftError

    raise AutoftError("autoft advise is not built yet", "see the open issues")
