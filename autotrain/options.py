"""What `autoft run` takes (`RunOptions`) and the one serialisation of a run as a command line
(`to_argv`).

`RunOptions` is the single source of `autoft run`'s own flags: each field's metadata holds its
help text, metavar and kind, and `autoft/cli/run.py` generates the argparse flags from it, as
`autoft/cli/_flags.py` does for the advisor's `Question`. A field whose default depends on the
context (the demo's smaller search, the search's first rung sized from the final budget) is None
until `pipeline.resolve_options` decides it, so an explicit `--search-trials 9` stays explicit.

`to_argv` writes the `autoft run ...` command that carries a RunOptions: `autoft-run.json` stores
it as the command that reproduces a run, and the TUI shows and runs the same argv.
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoft.advisor.question import Question
from autoft.advisor.spec import check_at_least
from autoft.autotrain.backends import BACKENDS, Parallel, get_backend
from autoft.autotrain.schedule import parse_duration
from autoft.errors import AutoftError


def _opt(default, help: str, *, metavar: str | None = None, kind: str = "str", group: str = "search",
         exclusive: str | None = None, short: str | None = None, factory=None, choices: tuple | None = None):
    """A RunOptions field with its flag's metadata. kind: str, int, float+ (positive), duration,
    flag (store_true), bool? (--x / --no-x, None when neither), names (one or more), none (not a
    command-line flag); `choices` limits a str."""
    md = {"help": help, "metavar": metavar, "kind": kind, "group": group, "exclusive": exclusive, "short": short,
          "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


# Column flags of the data layer (autoft.autotrain.data.load_data), shared with `autoft advise`.
DATA_COLUMNS = {
    "text_column": "column with the input text (classification; default: guessed)",
    "label_column": "column with the label (classification; default: guessed)",
    "prompt_column": "column with the prompt/instruction (generation; default: guessed)",
    "response_column": "column with the response/output (generation; default: guessed)",
    "text_pair_column": "second text of a sentence pair (classification; default: sentence2, hypothesis, "
                        "... when the data has such a pair)",
    "label_columns": "multi-label as several 0/1 columns: their names, comma-separated (default: found "
                     "when the data has no label column)",
    "source_column": "column with the source text: the document to summarize or the text to translate "
                     "(summarization/translation; default: guessed)",
    "target_column": "column with the target text: the summary or the translation (default: guessed)",
}
DATA_METAVARS = {"label_columns": "A,B,..."}
ALLOW_EMPTY_HELP = ("multi-label: a row may have no label at all ('none of these'); default: yes for "
                    "0/1 columns, no for label lists")

# The demo: small enough for a few minutes on 2 CPU cores, search included.
DEMO_DEFAULTS = {"search_trials": 6, "min_steps": 15, "max_steps": 120, "eval_every": 30,
                 "max_eval_examples": 150}
DEFAULT_SEARCH_TRIALS = 9
DEFAULT_EPOCHS = 3.0


@dataclass
class RunOptions:
    """Everything `autoft run` takes. `question` holds the advisor's fields (`Question`)."""

    data: str | None = _opt(None, "training data: CSV/TSV/JSON(L)/Parquet file, a folder with train/validation/test "
                            "files, or a Hub dataset id; omitted: the built-in demo", metavar="PATH", group="data")
    question: dict = _opt(None, "the advisor's Question fields", kind="none", factory=dict)
    text_column: str | None = _opt(None, DATA_COLUMNS["text_column"], metavar="NAME", group="data")
    label_column: str | None = _opt(None, DATA_COLUMNS["label_column"], metavar="NAME", group="data")
    prompt_column: str | None = _opt(None, DATA_COLUMNS["prompt_column"], metavar="NAME", group="data")
    response_column: str | None = _opt(None, DATA_COLUMNS["response_column"], metavar="NAME", group="data")
    text_pair_column: str | None = _opt(None, DATA_COLUMNS["text_pair_column"], metavar="NAME", group="data")
    source_column: str | None = _opt(None, DATA_COLUMNS["source_column"], metavar="NAME", group="data")
    target_column: str | None = _opt(None, DATA_COLUMNS["target_column"], metavar="NAME", group="data")
    label_columns: str | None = _opt(None, DATA_COLUMNS["label_columns"], metavar=DATA_METAVARS["label_columns"],
                                     group="data")
    allow_empty_labels: bool | None = _opt(None, ALLOW_EMPTY_HELP, kind="bool?", group="data")
    search_trials: int | None = _opt(None, f"configurations the successive-halving search starts with "
                                     f"(default {DEFAULT_SEARCH_TRIALS}; demo {DEMO_DEFAULTS['search_trials']})",
                                     metavar="N", kind="int")
    eta: int = _opt(3, "reduction factor: keep 1/K per rung (default 3)", metavar="K", kind="int")
    min_steps: int | None = _opt(None, "optimizer steps of the first rung (default: final steps / eta, at most 100)",
                                 metavar="N", kind="int")
    max_steps: int | None = _opt(None, "optimizer steps of the final run", metavar="N", kind="int",
                                 exclusive="budget")
    epochs: float | None = _opt(None, f"epochs of the final run (default {DEFAULT_EPOCHS:g})", metavar="E",
                                kind="float+", exclusive="budget")
    time_budget: str | float | None = _opt(None, "the whole run's wall time - search, final run, evaluation, "
                                           "saving - planned from a few timed steps: 30m, 2h, 1h30m, 90s",
                                           metavar="DURATION", kind="duration")
    seed: int = _opt(0, "seed for sampling, data order and heads (default 0)", metavar="S", kind="int")
    eval_every: int | None = _opt(None, "final run: validate every N steps for early stopping (default: about "
                                  "10 times)", metavar="N", kind="int")
    patience: int = _opt(3, "final run: stop after N validations without improvement (default 3)", metavar="N",
                         kind="int")
    max_eval_examples: int | None = _opt(None, "cap on validation examples per evaluation", metavar="N", kind="int")
    no_search: bool = _opt(False, "skip the search: train the recommended setup once", kind="flag")
    packing: bool = _opt(False, "generation: pack whole examples into seq-len blocks (fewer pad tokens) when the "
                         "model keeps packed examples apart; checked on the model, else off with a note",
                         kind="flag")
    # where the search's trials run (autotrain/backends.py); --gpus-per-trial is the advisor's
    # (Question.gpus_per_trial): its memory plan is for that share of a GPU
    search_backend: str = _opt("local", "where the search's trials run: local (one after another in this "
                               "process) or ray (Ray Tune: several at once, across GPUs and machines; "
                               "pip install 'autoft[ray]') (default local)", metavar="local|ray",
                               group="parallel", choices=tuple(BACKENDS))
    ray_address: str | None = _opt(None, "Ray cluster to run the trials on: auto (the one `ray start` started on "
                                   "this machine) or HOST:PORT; default: start Ray on this machine",
                                   metavar="ADDR", group="parallel")
    trials_in_parallel: int | None = _opt(None, "most trials running at once (ray; default: as many as the "
                                          "cluster's CPUs and GPUs allow)", metavar="N", kind="int",
                                          group="parallel")
    cpus_per_trial: float | None = _opt(None, "CPU cores per trial, fractions allowed (ray; default 1; also its "
                                        "torch threads)", metavar="N", kind="float+", group="parallel")
    output: str | None = _opt(None, "output folder (default autoft-output/<timestamp>); must be empty unless "
                              "--overwrite", metavar="DIR", group="output")
    resume: str | None = _opt(None, "continue an interrupted run in DIR", metavar="DIR", group="output")
    overwrite: bool = _opt(False, "replace autoft's files in a non-empty --output", kind="flag", group="output")
    merge: bool = _opt(False, "save LoRA/QLoRA as merged full weights, not an adapter", kind="flag", group="output")
    yes: bool = _opt(False, "do not ask before training", kind="flag", group="output", short="-y")
    report_to: list[str] | None = _opt(None, "experiment tracking, one run per search trial plus the final run: "
                                       "tensorboard (default when installed), mlflow, wandb, trackio (several "
                                       "allowed) or none; all local, under --output (W&B offline)",
                                       metavar="NAME", kind="names", group="output")
    # several machines (--nnodes M with the advisor's flags): passed to torch.distributed.run
    node_rank: int = _opt(0, "this machine's rank, 0 .. --nnodes - 1; machine 0 runs the advisor and the search, "
                          "writes the outputs and hosts the rendezvous (default 0)", metavar="R", kind="int",
                          group="distributed")
    rdzv_endpoint: str | None = _opt(None, "HOST:PORT of machine 0, the same on every machine (several "
                                     "machines; the output folder and data must be on storage they share)",
                                     metavar="HOST:PORT", group="distributed")
    # not flags: a recommendation to use as is (tests, benchmarks), and the device ("auto": CUDA
    # when there is one; the advisor's --gpu decides what is planned for)
    recommendation: dict | None = _opt(None, "a recommendation to use as is", kind="none")
    device: str = _opt("auto", "cpu, cuda or auto", kind="none")

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise AutoftError("--max-steps and --epochs both given", "pass one of them")
        for name in ("search_trials", "min_steps", "max_steps", "eval_every", "patience", "max_eval_examples",
                     "trials_in_parallel"):
            check_at_least("--" + name.replace("_", "-"), getattr(self, name), 1)
        check_at_least("--eta", self.eta, 2, fix="pass --eta 3")
        if self.epochs is not None and not self.epochs > 0:
            raise AutoftError(f"--epochs must be positive, got {self.epochs}")
        parse_duration(self.time_budget)  # fail early on a bad duration
        unknown = sorted(set(self.question or {}) - {f.name for f in dataclasses.fields(Question)})
        if unknown:
            raise AutoftError(f"unknown question field(s) {', '.join(unknown)}")
        Question(**(self.question or {}))  # bad overrides fail here, before anything is written
        if self.report_to is not None:
            from autoft.autotrain.tracking import check_names

            self.report_to = check_names(self.report_to)
        self._check_parallel()
        if self.resume and self.output and Path(self.output).resolve() != Path(self.resume).resolve():
            raise AutoftError("--output and --resume name different folders", "pass only --resume DIR")
        nnodes = int((self.question or {}).get("nnodes") or 1)
        check_at_least("--node-rank", self.node_rank, 0, fix="pass --node-rank 0 on the first machine")
        if self.node_rank >= nnodes:
            raise AutoftError(f"--node-rank {self.node_rank} with --nnodes {nnodes}",
                              f"pass a rank from 0 to {nnodes - 1}")
        if nnodes > 1 and not self.rdzv_endpoint:
            raise AutoftError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (machine 0's address)",
                              "pass the same --rdzv-endpoint on every machine")
        if self.rdzv_endpoint and ":" not in self.rdzv_endpoint:
            raise AutoftError(f"--rdzv-endpoint {self.rdzv_endpoint!r} has no port", "pass HOST:PORT, e.g. node0:29500")

    def _check_parallel(self) -> None:
        """Options that spread trials over processes need a backend that does."""
        if self.cpus_per_trial is not None and not self.cpus_per_trial > 0:
            raise AutoftError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        backend = get_backend(self.search_backend)
        if backend.parallel:
            return
        given = [flag_of(n) for n in ("ray_address", "cpus_per_trial") if getattr(self, n) is not None]
        given += ["--trials-in-parallel"] if (self.trials_in_parallel or 1) > 1 else []
        given += ["--gpus-per-trial"] if (self.question or {}).get("gpus_per_trial") is not None else []
        if given:
            raise AutoftError(f"{', '.join(given)} need(s) a search backend that runs trials in parallel; "
                              f"--search-backend {backend.name} runs one at a time", "add --search-backend ray")

    def parallel(self) -> Parallel:
        """How the search's trials share the machines (`backends.Parallel`)."""
        return Parallel(backend=self.search_backend, address=self.ray_address,
                        trials_at_once=self.trials_in_parallel,
                        gpus_per_trial=(self.question or {}).get("gpus_per_trial"),
                        cpus_per_trial=self.cpus_per_trial)

    def to_dict(self) -> dict:
        return asdict(self)

    def data_columns(self) -> dict:
        """load_data keyword arguments for the column options that were given, and the language
        pair of a translation set (--source-lang/--target-lang) when the question names one."""
        out = {n: getattr(self, n) for n in DATA_COLUMNS if getattr(self, n)}
        if self.allow_empty_labels is not None:
            out["allow_empty_labels"] = self.allow_empty_labels
        out.update({k: v for k in ("source_lang", "target_lang") if (v := (self.question or {}).get(k))})
        return out

    @classmethod
    def field_help(cls) -> dict[str, dict]:
        """name -> flag metadata (help, metavar, choices, ...): the TUI's tooltips are --help's words."""
        return {f.name: dict(f.metadata) for f in dataclasses.fields(cls)}

    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The fields that are `autoft run` flags, in order."""
        return [f for f in dataclasses.fields(cls) if f.metadata["kind"] != "none"]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def question_argv(question: dict) -> list[str]:
    """The advisor flags that carry `question` (its set fields, in Question's order)."""
    args: list[str] = []
    for f in dataclasses.fields(Question):
        v = (question or {}).get(f.name)
        if v is None or f.metadata.get("group") == "hidden":
            continue
        flag = f.metadata.get("flag") or flag_of(f.name)
        if isinstance(v, bool):
            if v:
                args.append(flag)
            elif f.type == "bool | None":  # an explicit no (--no-gradient-checkpointing)
                args.append("--no-" + flag[2:])
        else:
            args += [flag, str(v)]
    return args


# Written after the other options, in this order, so that commands read naturally.
_LAST = ("no_search", "merge", "output", "resume")


def to_argv(opts: RunOptions, *, always: tuple[str, ...] = ()) -> list[str]:
    """`["autoft", "run", ...]`: the flags that carry `opts` - every option that differs from its
    default (plus the names in `always`, e.g. the seed of a reproduced run), question fields
    included. `--overwrite` and `--yes` are how a command is run, not what it runs: left out."""
    args = ["autoft", "run"]
    if opts.data:
        args += ["--data", opts.data]
    args += question_argv(opts.question)
    fields = {f.name: f for f in RunOptions.flag_fields()}
    names = [n for n in fields if n not in ("data", "overwrite", "yes", *_LAST)] + list(_LAST)
    for name in names:
        f, v = fields[name], getattr(opts, name)
        if v is None or (v == f.default and name not in always):
            continue
        if f.metadata["kind"] == "flag":
            if v:
                args.append(flag_of(name))
        elif f.metadata["kind"] == "bool?":
            args.append(flag_of(name) if v else "--no-" + flag_of(name)[2:])
        elif isinstance(v, (list, tuple)):
            args += [flag_of(name), *map(str, v)]
        else:
            args += [flag_of(name), str(v)]
    return args


def command_line(opts: RunOptions, **kw) -> str:
    return shlex.join(to_argv(opts, **kw))
