"""Flags shared by `advise`, `run` and `estimate`, generated from the Question dataclass so that
the CLI's help and the TUI's labels come from the same text."""
from __future__ import annotations

import argparse
import dataclasses

from autoft.advisor.question import Question, fill_unset
from autoft.autotrain.options import ALLOW_EMPTY_HELP, DATA_COLUMNS, DATA_METAVARS


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_question_flags(parser: argparse.ArgumentParser, groups=("situation", "hardware", "override"),
                       skip: tuple[str, ...] = ()) -> None:
    titles = {"situation": "your situation", "hardware": "hardware", "override": "overrides (the advisor chooses what you leave out)"}
    for group in groups:
        g = parser.add_argument_group(titles[group])
        for f in dataclasses.fields(Question):
            md = f.metadata
            if md.get("group") != group or f.name in skip:
                continue
            flag = md.get("flag") or "--" + f.name.replace("_", "-")
            kw: dict = {"dest": f.name, "help": md["help"]}
            if f.type in ("bool", "bool | None"):
                kw["action"] = argparse.BooleanOptionalAction if f.type == "bool | None" else "store_true"
                kw["default"] = f.default
            else:
                # None everywhere: "not given on the command line", so that data-derived facts
                # (language, task, ...) can fill it; Question applies its own defaults after.
                kw["default"] = None
                if "int" in f.type:
                    kw["type"] = _int
                elif "float" in f.type:
                    kw["type"] = _float
                if md.get("choices"):
                    kw["choices"] = md["choices"]
                if md.get("metavar"):
                    kw["metavar"] = md["metavar"]
            g.add_argument(flag, **kw)


def question_from_args(args: argparse.Namespace, facts: dict | None = None) -> Question:
    """The Question the flags ask; `facts` (what the data says) fill the fields left unset."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(Question)
          if getattr(args, f.name, None) is not None}
    return Question(**fill_unset(kw, facts or {}))


def add_data_flags(group) -> None:
    for name, help_ in DATA_COLUMNS.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, metavar=DATA_METAVARS.get(name, "NAME"), help=help_)
    group.add_argument("--allow-empty-labels", dest="allow_empty_labels", action=argparse.BooleanOptionalAction,
                       default=None, help=ALLOW_EMPTY_HELP)


def data_column_kwargs(obj) -> dict:
    """load_data keyword arguments for the column flags that were given (`autoft advise`; `autoft
    run` has RunOptions.data_columns)."""
    out = {n: getattr(obj, n) for n in DATA_COLUMNS if getattr(obj, n, None)}
    if getattr(obj, "allow_empty_labels", None) is not None:
        out["allow_empty_labels"] = obj.allow_empty_labels
    return out


def data_language_kwargs(question) -> dict:
    """load_data's source_lang/target_lang from --source-lang/--target-lang (args, a Question or
    a RunOptions.question dict), for a translation set whose languages the layout does not name."""
    get = question.get if isinstance(question, dict) else (lambda k: getattr(question, k, None))
    return {k: get(k) for k in ("source_lang", "target_lang") if get(k)}
