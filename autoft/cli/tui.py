"""`autoft tui`: the interactive app (also what `autoft` with no arguments opens)."""
from __future__ import annotations

HELP = "open the interactive app: data -> recommendation -> run -> results"
EXAMPLES = """\
  autoft                                  # same as `autoft tui`
  autoft tui --data ../shared/data/banking77
  autoft tui --data train.csv --gpu T4    # start with the data loaded, planning for a 16 GB T4
"""


def add_arguments(parser) -> None:
    parser.add_argument("--data", metavar="PATH", help="data to start with (file or folder)")
    parser.add_argument("--gpu", metavar="auto|cpu|NAME", default=None,
                        help="hardware to plan for (the Hardware screen can change it)")


def run(args) -> int:
    import sys

    from autoft.errors import AutoftError

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise AutoftError("autoft tui needs an interactive terminal",
                          "run it in a terminal, or use `autoft advise` / `autoft run` in scripts")
    from autoft.tui.app import create_app
    from autoft.tui.services import Answers

    answers = Answers(data=args.data or "")
    if args.gpu:
        answers.set("gpu", args.gpu)
    create_app(answers=answers).run()
    return 0
