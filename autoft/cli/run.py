"""`autoft run`: recommendation, successive-halving search, final fine-tune, outputs.

Its own flags are generated from `RunOptions` (autoft/autotrain/options.py: help text, metavar
and kind as field metadata), the advisor's from `Question` (`_flags.add_question_flags`). Every
default is None here: a flag not given leaves the option to RunOptions (or to the run, where the
default depends on the context), so an explicit value is never mistaken for a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from autoft.advisor.question import Question
from autoft.autotrain.options import RunOptions, flag_of
from autoft.cli._flags import _int, add_question_flags

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
  autoft run --data train.csv --search-backend ray --trials-in-parallel 2 --cpus-per-trial 1   # Ray on this machine
  autoft run --data train.csv --search-backend ray --ray-address 10.0.0.5:6379 --gpus-per-trial 0.5
  autoft run --data train.csv --gpus 4           # final run on 4 GPUs: DDP, or FSDP when only the sharded plan fits
  autoft run --data train.csv --gpu cpu --processes 2   # 2 CPU processes (gloo)
  autoft run --data d.jsonl --gpus 8 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 --output /shared/out
"""
GROUPS = {"data": "data", "search": "search and training",
          "parallel": "trials in parallel (--search-backend ray; --gpus-per-trial above)", "output": "output",
          "distributed": "several machines (with --gpus N --nnodes M)"}


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


TYPES = {"int": _int, "float+": _float_pos, "duration": _duration, "str": str, "names": _tracker}


def add_run_flags(parser: argparse.ArgumentParser, after_data=None) -> dict[str, argparse._ArgumentGroup]:
    """RunOptions' flags, by group (data, search and training, output), in field order;
    `after_data()` adds flags between the data group and the others (the advisor's)."""
    groups = {"data": parser.add_argument_group(GROUPS["data"])}
    if after_data is not None:
        after_data()
    groups.update({k: parser.add_argument_group(t) for k, t in GROUPS.items() if k != "data"})
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in RunOptions.flag_fields():
        md = f.metadata
        target = groups[md["group"]]
        if md["exclusive"]:
            if md["exclusive"] not in exclusive:
                exclusive[md["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[md["exclusive"]]
        flags = [flag_of(f.name)] + ([md["short"]] if md.get("short") else [])
        if md["kind"] == "flag":
            target.add_argument(*flags, dest=f.name, action="store_true", default=None, help=md["help"])
        elif md["kind"] == "bool?":  # --x / --no-x, None when neither is given
            target.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=md["help"])
        elif md["kind"] == "names":  # one or more names, each may be comma-separated
            target.add_argument(*flags, dest=f.name, nargs="+", type=TYPES["names"], metavar=md["metavar"],
                                default=None, help=md["help"])
        else:
            target.add_argument(*flags, dest=f.name, type=TYPES[md["kind"]], metavar=md["metavar"],
                                default=None, help=md["help"], choices=md.get("choices"))
    return groups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def _error(message: str):  # one line, exit 2 (argparse's usage block would be 30 lines)
        print(f"autoft run: error: {message} (see autoft run --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = _error  # type: ignore[method-assign]
    groups = add_run_flags(parser, after_data=lambda: add_question_flags(parser))
    o = groups["output"]
    o.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr (warnings still)")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """RunOptions from parsed `autoft run` arguments: only what was given (None is "not given")."""
    q = {f.name: getattr(args, f.name) for f in dataclasses.fields(Question) if getattr(args, f.name, None) is not None}
    kw = {f.name: getattr(args, f.name) for f in RunOptions.flag_fields() if getattr(args, f.name, None) is not None}
    return RunOptions(question=q, **kw)


def run_from_argv(argv: list[str], progress=None, **kw):
    """`autoft run <argv>` in this process (the TUI's entry point): the same parser and pipeline."""
    from autoft.autotrain.pipeline import run as run_pipeline
    from autoft.cli import build_parser

    args = build_parser().parse_args(["run", *argv])
    return run_pipeline(options_from_args(args), progress=progress, argv=["autoft", "run", *argv], **kw)


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

    from autoft.autotrain.pipeline import display_name, run as run_pipeline
    from autoft.autotrain.progress import Progress, StderrReporter

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("AUTOFT_DEBUG", "") in ("", "0"):
        # our progress display is the one on stderr: silence transformers' bars and load reports
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    opts = options_from_args(args)
    if opts.node_rank > 0:  # another machine of a distributed final run: start its processes only
        from pathlib import Path

        from autoft.autotrain.launch import join

        out = opts.output or opts.resume
        if not out:
            from autoft.errors import AutoftError

            raise AutoftError("--node-rank > 0 needs the output folder machine 0 writes to",
                              "pass the same --output (or --resume) as on machine 0, on shared storage")
        join(opts, Path(out), say=lambda text: print(text, file=sys.stderr))
        print(f"machine {opts.node_rank}: its training processes finished; machine 0 writes the outputs "
              f"to {out}", file=sys.stderr)
        return 0
    progress = Progress([StderrReporter(quiet=args.quiet)])
    typed = ["autoft", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith(("autoft", "__main__.py")) else None
    result = run_pipeline(opts, progress=progress, confirm=None if args.json else _confirm, argv=typed)
    if args.json:
        print(json.dumps(result.summary(), default=str))
    else:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in result.test.items() if isinstance(v, float))
        print(f"{result.output_dir}: {display_name(result.model)} ({result.technique}) test {figures}")
    return 0
