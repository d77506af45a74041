"""`autoft tui` (placeholder until its issue lands)."""
from __future__ import annotations

HELP = "tui (not built yet)"
EXAMPLES = "  autoft tui --help\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from autoft.errors import AutoftError

    raise AutoftError("autoft tui is not built yet", "see the open issues")
