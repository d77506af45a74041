"""What the TUI calls in the core, in one place, and the answers it keeps.

The TUI is a thin shell: every decision is made by the same functions that `autoft advise` and
`autoft run` call. `Services` holds those functions; the defaults import the real core lazily (so
the first screen paints before torch or the data layer load), and tests pass fakes.

`Answers` is the one app-level state object: every screen reads its initial values from it and
writes what the user chose back, so going back and forth loses nothing.

The answers become a plan by ONE code path shared with the CLI: `Answers.options()` is the
`RunOptions` they ask for, `Answers.run_argv()` its `autoft run ...` command line (the core's one
serialiser, `options.to_argv`, which also writes a run's autoft-run.json), and `Answers.question()`
parses that command line with the CLI's own flag definitions (`autoft.cli._flags.add_question_flags`)
and turns it into a `Question` with the CLI's `question_from_args`. The Results screen shows the same argv, so what the TUI planned is what
the command reproduces (tests/test_tui.py checks it against `autoft run`'s parser).

This module must not import textual either: it is plain Python, testable on its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autoft.advisor.question import Question
from autoft.errors import AutoftError

if TYPE_CHECKING:
    from autoft.autotrain.options import RunOptions

# Question fields that the data profile fills (DataProfile.to_question_fields()).
PROFILE_FIELDS = ("task", "data_size", "num_labels", "seq_len_p95", "seq_len_p99", "seq_len_mean", "language")
# Written into the command even at their default: `autoft advise --data` lets the profile fill an
# unset language, so `--language en` on German data is an answer, not a default.
ALWAYS_WRITTEN = ("task", "language")
# Overrides the Recommendation screen offers, in display order.
OVERRIDE_FIELDS = ("model", "technique", "batch_size", "gradient_accumulation_steps", "seq_len",
                   "precision", "gradient_checkpointing", "optimizer", "lora_rank", "freeze_layers")


# -- the real core, imported only when first used -----------------------------------------------

def _load_data(path: str):
    from autoft.autotrain.data import load_data

    return load_data(path)


def _build_profile(bundle):
    from autoft.autotrain.data import build_profile

    return build_profile(bundle)


def _probe():
    from autoft.advisor.hardware import probe

    return probe()


def _plan_hardware(gpu: str, gpu_memory: str | None, gpus: int | None):
    from autoft.advisor.hardware import plan_hardware

    return plan_hardware(gpu, gpu_memory, gpus)


def _gpu_table():
    from autoft.advisor.hardware import gpu_table

    return gpu_table()


def _advise(question: Question, hardware):
    from autoft.advisor.recommend import advise

    return advise(question, hardware)


def _run(argv: list[str], *, on_event: Callable[[dict], None], cancel: threading.Event):
    """Run `autoft run <argv>` in this process: the CLI's parser and pipeline (`run_from_argv`).

    Progress events (dicts, see autoft/autotrain/progress.py) go to `on_event`. Cancel: once
    `cancel` is set the pipeline stops at its next step as on Ctrl-C (`progress.RunInterrupted`),
    leaving the output folder resumable."""
    import os

    from autoft.cli.run import run_from_argv

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as `autoft run` does
    return run_from_argv(argv, progress=on_event, should_stop=cancel.is_set)


@dataclass
class Services:
    """The core functions the TUI calls. Pass fakes in tests: `Services(advise=fake_advise, ...)`."""

    load_data: Callable[[str], Any] = _load_data
    build_profile: Callable[[Any], Any] = _build_profile
    probe: Callable[[], Any] = _probe
    plan_hardware: Callable[[str, str | None, int | None], Any] = _plan_hardware
    gpu_table: Callable[[], dict] = _gpu_table
    advise: Callable[[Question, Any], Any] = _advise
    run: Callable[..., Any] = _run


# -- the answers --------------------------------------------------------------------------------

def _question_parser() -> argparse.ArgumentParser:
    """The CLI's question flags (same generator as `autoft advise` / `autoft run`) plus --data."""
    from autoft.cli._flags import add_question_flags

    p = argparse.ArgumentParser(prog="autoft run", add_help=False, exit_on_error=False)

    def error(message: str):  # never print or exit inside the app
        raise AutoftError(message, "correct the field")

    p.error = error  # type: ignore[method-assign]
    p.add_argument("--data")
    add_question_flags(p)
    return p


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Question)}


@dataclass
class Answers:
    """Everything the user answered, plus the core's replies that screens show (kept so that going
    back does not recompute). Question fields live in `fields`; None means "the advisor decides"."""

    data: str = ""
    output: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    # What the data layer inferred (DataProfile.to_question_fields()); `autoft run --data` fills
    # the same fields from its own profile where the command leaves them unset.
    inferred: dict[str, Any] = field(default_factory=dict)
    # `autoft run` options that are not Question fields: "search_trials", "max_steps",
    # "trials_in_parallel" (ints), "search_backend", "ray_address".
    run_options: dict[str, Any] = field(default_factory=dict)
    profile: Any = None
    hardware: Any = None
    recommendation: Any = None
    result: Any = None

    def get(self, name: str) -> Any:
        v = self.fields.get(name)
        if v is None:
            v = self.inferred.get(name)
        return _DEFAULTS.get(name) if v is None else v

    def set(self, name: str, value: Any) -> None:
        if name not in _DEFAULTS:
            raise KeyError(name)
        self.fields[name] = value

    def clear_from_data(self) -> None:
        """New data: forget what was inferred from the old data and everything downstream."""
        self.inferred, self.profile, self.recommendation, self.result = {}, None, None, None
        for name in PROFILE_FIELDS:
            self.fields.pop(name, None)

    def run_argv(self, *, resume: bool = False) -> list[str]:
        """The `autoft run` arguments that carry these answers (without the leading `run`).

        Every answer that differs from the Question's default is written out, inferred or not
        (`--language de` although the profile says de): the command stays exact even if the data
        layer's inference changes. Resuming needs only the folder: the run saved its options."""
        if resume:
            return ["--resume", self.output]
        from autoft.autotrain.options import to_argv

        return to_argv(self.options())[2:]

    def options(self) -> "RunOptions":
        """The RunOptions these answers ask for (what `run_argv` serialises)."""
        from autoft.autotrain.options import RunOptions

        question = {}
        for f in dataclasses.fields(Question):
            if f.metadata.get("group") == "hidden" or f.name == "data_size" and self.data:
                continue  # read from the data by the run itself
            value = self.fields.get(f.name)
            if value is None or value == "" or value == f.default and f.name not in ALWAYS_WRITTEN:
                continue
            question[f.name] = value
        run_options = {k: v for k, v in self.run_options.items() if v not in (None, "")}
        return RunOptions(data=self.data or None, question=question, output=self.output or None, **run_options)

    def command(self, *, resume: bool = False) -> str:
        return "autoft run " + shlex.join(self.run_argv(resume=resume))

    def question(self) -> Question:
        """The Question these answers ask: the command line parsed by the CLI's own flags
        (`add_question_flags`, `question_from_args`), then, as `autoft run --data` does, the
        fields the data profile knows filled in where the command leaves them unset."""
        from autoft.cli._flags import question_from_args

        try:  # the run-only options (--search-trials, --output, ...) are not the question's
            args, _ = _question_parser().parse_known_args(self.run_argv())
        except argparse.ArgumentError as err:
            raise AutoftError(str(err), "correct the field") from None
        return question_from_args(args, self.inferred)


def parse_int(text: str, name: str) -> int | None:
    """An override typed in a field: '' is None (the advisor decides), else a positive integer."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        v = int(text)
    except ValueError:
        raise AutoftError(f"{name.replace('_', ' ')} must be a whole number, got {text!r}",
                          "type a number or leave it empty for the advisor's choice") from None
    if v < 1:
        raise AutoftError(f"{name.replace('_', ' ')} must be at least 1, got {v}")
    return v


def to_dict(obj: Any) -> dict:
    """Core objects (Recommendation, DataProfile, Hardware, results) as their documented dicts."""
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(vars(obj))


def default_output(data: str) -> str:
    """Where a run goes unless the user says otherwise: ./autoft-runs/<data name>."""
    name = Path(data).stem if data else "demo"
    return str(Path("autoft-runs") / (name or "run"))
