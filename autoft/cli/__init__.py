"""`autoft` command line: one module per subcommand (like huggingface_hub's `hf`).

Each subcommand module defines HELP (one line), EXAMPLES (shown in its --help), `add_arguments`
and `run(args) -> int`. Modules import torch/transformers/textual only inside `run`, so that
`autoft --help` and `autoft advise` start instantly.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from autoft import __version__
from autoft.errors import AutoftError

SUBCOMMANDS = ("run", "advise", "estimate", "probe", "tui")

DESCRIPTION = """\
autoft recommends a model, a fine-tuning technique (full, freeze, LoRA, QLoRA) and a batch size
for your data and hardware, predicts peak GPU memory before any GPU time is spent, validates the
data, searches hyperparameters with successive halving, and runs the final fine-tune.
Run `autoft` with no arguments to open the interactive app."""

EPILOG = """\
examples:
  autoft run                                   # built-in demo: MiniLM on a banking77 slice, CPU
  autoft advise --data train.csv --gpu T4      # what to fine-tune on a 16 GB T4, and why
  autoft estimate --model meta-llama/Llama-3.1-8B --technique qlora --batch-size 4 --seq-len 2048
  autoft probe --json                          # this machine's GPUs (or CPU)
  autoft run --data ./mydata --output out/ --json

Set AUTOFT_DEBUG=1 to see tracebacks. Docs: README.md"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _load(name: str):
    return importlib.import_module(f"autoft.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoft", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"autoft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in SUBCOMMANDS:
        mod = _load(name)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           epilog="examples:\n" + mod.EXAMPLES.rstrip(), formatter_class=_Formatter)
        mod.add_arguments(p)
        p.set_defaults(_module=name)
    return parser


class _ArgumentParserExit(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("AUTOFT_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser()
        if not argv:
            argv = ["tui"]
        args = parser.parse_args(argv)
        if not getattr(args, "_module", None):
            parser.print_help()
            return 0
        return int(_load(args._module).run(args) or 0)
    except AutoftError as err:
        if debug:
            raise
        print(f"autoft: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `autoft ... | head` closed the pipe: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("autoft: interrupted.", file=sys.stderr)
        return 130
