"""`autoft probe` (placeholder until its issue lands)."""
from __future__ import annotations

HELP = "probe (not built yet)"
EXAMPLES = "  autoft probe --help\n"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from autoft.errors import AutoftError

    raise AutoftError("autoft probe is not built yet", "see the open issues")
