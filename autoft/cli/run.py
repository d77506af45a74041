"""`autoft run`: recommendation, successive-halving search, final fine-tune, outputs."""
from __future__ import annotations

import argparse
import sys

from autoft.cli._flags import _int, add_data_flags, add_question_flags

HELP = "fine-tune end to end: advise, search hyperparameters, train, evaluate, save"
EXAMPLES = """\
  autoft run                                     # built-in demo: MiniLM on a banking77 slice, CPU, a few minutes
  autoft run --data train.csv --output out/      # advisor picks model, technique, batch; 9-trial search
  autoft run --data ./data --model bert-base-uncased --technique lora --search-trials 27 --time-budget 30m
  autoft run --data alpaca.jsonl --task generation --gpu auto --max-steps 2000 --merge
  autoft run --data train.csv --no-search --epochs 2 --seed 1 --json > summary.json
  autoft run --resume out/                       # continue a killed run; finished trials are not re-run
  autoft run --data mrpc/ --class-weights balanced --metric macro_f1 --report-to tensorboard mlflow
  autoft run --data go_emotions/ --output emo/   # multi-label (a label column holding lists)
"""


def _duration(text: str) -> str:
    from autoft.autotrain.schedule import parse_duration
    from autoft.errors import AutoftError

    try:
        parse_duration(text)
    except AutoftError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
    return text


def _float_pos(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def _tracker(text: str) -> str:
    from autoft.autotrain.tracking import TRACKERS

    for name in text.replace(",", " ").split():
        if name.lower() not in (*TRACKERS, "none"):
            raise argparse.ArgumentTypeError(f"unknown tracker {name!r}; use {', '.join([*TRACKERS, 'none'])}")
    return text.lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def _error(message: str):  # one line, exit 2 (argparse's usage block would be 30 lines)
        print(f"autoft run: error: {message} (see autoft run --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = _error  # type: ignore[method-assign]
    d = parser.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="training data: CSV/TSV/JSON(L)/Parquet file, a folder with "
                   "train/validation/test files, or a Hub dataset id; omitted: the built-in demo")
    add_data_flags(d)
    add_question_flags(parser)
    s = parser.add_argument_group("search and training")
    s.add_argument("--search-trials", type=_int, default=9, metavar="N",
                   help="configurations the successive-halving search starts with (default 9; demo 6)")
    s.add_argument("--eta", type=_int, default=3, metavar="K", help="reduction factor: keep 1/K per rung (default 3)")
    s.add_argument("--min-steps", type=_int, metavar="N",
                   help="optimizer steps of the first rung (default: final steps / eta, at most 100)")
    budget = s.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=_int, metavar="N", help="optimizer steps of the final run")
    budget.add_argument("--epochs", type=_float_pos, metavar="E", help="epochs of the final run (default 3)")
    s.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="cap on the search's wall time: 30m, 2h, 1h30m, 90s")
    s.add_argument("--seed", type=_int, default=0, metavar="S", help="seed for sampling, data order and heads (default 0)")
    s.add_argument("--eval-every", type=_int, metavar="N",
                   help="final run: validate every N steps for early stopping (default: about 10 times)")
    s.add_argument("--patience", type=_int, default=3, metavar="N",
                   help="final run: stop after N validations without improvement (default 3)")
    s.add_argument("--max-eval-examples", type=_int, metavar="N", help="cap on validation examples per evaluation")
    s.add_argument("--no-search", action="store_true", help="skip the search: train the recommended setup once")
    o = parser.add_argument_group("output")
    o.add_argument("--output", metavar="DIR", help="output folder (default autoft-output/<timestamp>); "
                   "must be empty unless --overwrite")
    o.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR")
    o.add_argument("--overwrite", action="store_true", help="replace autoft's files in a non-empty --output")
    o.add_argument("--merge", action="store_true", help="save LoRA/QLoRA as merged full weights, not an adapter")
    o.add_argument("--yes", "-y", action="store_true", help="do not ask before training")
    o.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr (warnings still)")
    o.add_argument("--report-to", dest="report_to", nargs="+", type=_tracker, metavar="NAME",
                   help="experiment tracking, one run per search trial plus the final run: tensorboard "
                   "(default when installed), mlflow, wandb, trackio (several allowed) or none; all local, "
                   "under --output (W&B offline)")


def _confirm(plan: dict) -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return True  # nobody to ask: scripts and CI proceed
    print(f"autoft will fine-tune {plan['model']} ({plan['technique']}, {plan['final_steps']} steps after a "
          f"{plan['search_trials']}-trial search) on {plan['device']} into {plan['output_dir']}.", file=sys.stderr)
    ans = input("Start? [Y/n] ").strip().lower()
    return ans in ("", "y", "yes")


def run(args) -> int:
    import json
    import os

    from autoft.autotrain.pipeline import options_from_args, run as run_pipeline
    from autoft.autotrain.progress import Progress, StderrReporter

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("AUTOFT_DEBUG", "") in ("", "0"):
        # our progress display is the one on stderr: silence transformers' bars and load reports
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    opts = options_from_args(args)
    progress = Progress([StderrReporter(quiet=args.quiet)])
    argv = sys.argv if sys.argv and sys.argv[0].endswith(("autoft", "__main__.py")) else None
    command = None
    if argv:
        command = ["autoft", *argv[1:]]
    result = run_pipeline(opts, progress=progress, confirm=None if args.json else _confirm, argv=command)
    if args.json:
        print(json.dumps(result.summary(), default=str))
    else:
        t = result.test
        figures = ", ".join(f"{k} {v:.4f}" for k, v in t.items() if isinstance(v, float))
        from autoft.autotrain.pipeline import display_name

        print(f"{result.output_dir}: {display_name(result.model)} ({result.technique}) test {figures}")
    return 0
