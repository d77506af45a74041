"""`autoft run` (placeholder until its issue lands)."""
from __future__ import annotations

HELP = "run (not built yet)"
EXAMPLES = "  autoft run --help\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from autoft.errors import AutoftError

    raise AutoftError("autoft run is not built yet", "see the open issues")
