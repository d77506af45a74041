"""`autoft run` from start to end, one code path for the CLI and the TUI.

    result = run(RunOptions(data="train.csv", question={"gpu": "auto"}), progress=Progress([...]))

Steps: output folder -> data (or the built-in demo) -> profile -> recommendation (the advisor,
or one passed in, or the one saved in a resumed folder) -> successive-halving search ->
final fine-tune (the search's winner continued from its checkpoint to the full budget with LR
decay, or a fresh run without a search; early stopping on validation, best weights kept) -> test
evaluation next to a baseline -> model, tokenizer, labels, metrics.json, model card, report with
plots, and the run's own settings (`autoft-run.json`) with the exact `autoft run ...` command that
reproduces it.

Files in the output folder (the model is saved at its root, like a Trainer output folder, so
`PeftModel.from_pretrained(base, DIR)` / `AutoModel...from_pretrained(DIR)` load it directly):
    autoft-run.json, recommendation.json, search.json, trials.jsonl, metrics.json,
    history.json, README.md (model card), report.md, plots/*.png, model weights + tokenizer.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoft.advisor.question import fill_unset
from autoft.autotrain.evaluate import validation_loss
from autoft.autotrain.progress import Progress
from autoft.autotrain.schedule import (DEFAULT_HPARAMS, MIN_DECAY_FRACTION, for_technique, parse_dim,
                                       parse_duration, search_step_cap, warmup_steps)
from autoft.autotrain.store import TrialStore, write_json
from autoft.errors import AutoftError

RUN_FILE = "autoft-run.json"
# What autoft writes into an output folder (--overwrite removes these and nothing else).
OUTPUT_NAMES = (RUN_FILE, "recommendation.json", "search.json", "trials.jsonl", "metrics.json",
                "history.json", "README.md", "report.md", "plots", "checkpoints", "final-best",
                "adapter_model.safetensors", "adapter_config.json", "model.safetensors", "config.json",
                "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.txt", "labels.json", "chat_template.jinja", "merges.txt", "vocab.json")

# The demo: small enough for a few minutes on 2 CPU cores, search included.
DEMO_DEFAULTS = {"search_trials": 6, "min_steps": 15, "max_steps": 120, "eval_every": 30,
                 "max_eval_examples": 150}


@dataclass
class RunOptions:
    """Everything `autoft run` takes. `question` holds the advisor's fields (Question)."""

    data: str | None = None  # None: the built-in demo
    question: dict = field(default_factory=dict)
    text_column: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    search_trials: int = 9
    eta: int = 3
    min_steps: int | None = None  # None: chosen from the final budget (at most 100)
    max_steps: int | None = None  # final run's optimizer steps (exclusive with epochs)
    epochs: float | None = None  # None and no max_steps: 3 epochs
    time_budget: str | float | None = None  # caps the search: "30m", seconds
    seed: int = 0
    output: str | None = None
    resume: str | None = None
    overwrite: bool = False
    no_search: bool = False
    merge: bool = False
    yes: bool = False
    eval_every: int | None = None  # final run: validation every N steps (None: about 10 times)
    patience: int = 3  # final run: evaluations without improvement before stopping
    max_eval_examples: int | None = None  # cap on validation examples per evaluation
    recommendation: dict | None = None  # a recommendation to use as is (TUI, tests)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise AutoftError("--max-steps and --epochs both given", "pass one of them")
        for name in ("search_trials", "min_steps", "max_steps", "eval_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise AutoftError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if self.eta < 2:
            raise AutoftError(f"--eta must be at least 2, got {self.eta}", "pass --eta 3")
        if self.epochs is not None and not self.epochs > 0:
            raise AutoftError(f"--epochs must be positive, got {self.epochs}")
        parse_duration(self.time_budget)  # fail early on a bad duration
        from autoft.advisor.question import Question  # noqa: PLC0415  (no torch)

        valid = {f.name for f in dataclasses.fields(Question)}
        unknown = sorted(set(self.question or {}) - valid)
        if unknown:
            raise AutoftError(f"unknown question field(s) {', '.join(unknown)}")
        Question(**(self.question or {}))  # bad overrides fail here, before anything is written
        if self.resume and self.output and Path(self.output).resolve() != Path(self.resume).resolve():
            raise AutoftError("--output and --resume name different folders", "pass only --resume DIR")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunResult:
    output_dir: str
    model: str
    technique: str
    task: str
    config: dict  # the final run's hyperparameters
    test: dict
    baseline: dict
    seconds: float
    search_seconds: float
    train_seconds: float
    best_trial: int | None = None
    stopped_early: bool = False
    command: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The `--json` object."""
        return {"output_dir": self.output_dir, "model": self.model, "technique": self.technique,
                "task": self.task, "config": self.config, "test": _scalars(self.test),
                "baseline": _scalars(self.baseline), "seconds": self.seconds,
                "search_seconds": self.search_seconds, "train_seconds": self.train_seconds,
                "best_trial": self.best_trial, "command": self.command, "warnings": self.warnings}


def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str)) or v is None}


# ---------------------------------------------------------------------------------------------
# output folder and the reproducible command
# ---------------------------------------------------------------------------------------------

def prepare_output(opts: RunOptions) -> Path:
    if opts.resume:
        out = Path(opts.resume)
        if not (out / RUN_FILE).is_file():
            raise AutoftError(f"{out} is not an autoft run folder (no {RUN_FILE})",
                              "pass the --output folder of an earlier run to --resume")
        return out
    out = Path(opts.output) if opts.output else Path("autoft-output") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise AutoftError(f"{out} is a file", "pass a folder to --output")
    if out.is_dir() and any(out.iterdir()):
        if not opts.overwrite:
            raise AutoftError(f"output folder {out} is not empty",
                              "pass --overwrite to replace autoft's files there, --resume to continue, or another --output")
        for name in OUTPUT_NAMES:  # only what autoft writes: never a user's other files
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_command(opts: RunOptions, out: Path) -> str:
    """The `autoft run ...` command that reproduces this run (non-default options only)."""
    from autoft.advisor.question import Question  # noqa: PLC0415

    args = ["autoft", "run"]
    if opts.data:
        args += ["--data", opts.data]
    qdef = {f.name: f.default for f in dataclasses.fields(Question)}
    for f in dataclasses.fields(Question):
        v = opts.question.get(f.name)
        if v is None or v == qdef.get(f.name) or f.metadata.get("group") == "hidden":
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args += [flag if v else "--no-" + flag[2:]]
        else:
            args += [flag, str(v)]
    defaults = RunOptions()
    for name in ("text_column", "label_column", "prompt_column", "response_column", "search_trials", "eta",
                 "min_steps", "max_steps", "epochs",
                 "time_budget", "seed", "eval_every", "patience", "max_eval_examples"):
        v = getattr(opts, name)
        if v is not None and (v != getattr(defaults, name) or name == "seed"):
            args += ["--" + name.replace("_", "-"), str(v)]
    for name in ("no_search", "merge"):
        if getattr(opts, name):
            args.append("--" + name.replace("_", "-"))
    args += ["--output", str(out)]
    return shlex.join(args)


# ---------------------------------------------------------------------------------------------
# data, profile, recommendation
# ---------------------------------------------------------------------------------------------

def _load_bundle(opts: RunOptions, q: dict):
    from autoft.autotrain.data import load_data  # noqa: PLC0415

    source = opts.data
    if source is None:
        from autoft.autotrain.demo import demo_data_path  # noqa: PLC0415

        source = str(demo_data_path())
    from autoft.cli._flags import data_column_kwargs  # noqa: PLC0415

    return load_data(source, task=q.get("task"), **data_column_kwargs(opts))


def _profile(bundle) -> tuple[dict, list[str]]:
    from autoft.autotrain.data import build_profile  # noqa: PLC0415

    prof = build_profile(bundle)
    return prof.to_question_fields(), list(prof.warnings)


def _advise(q: dict):
    from autoft.advisor.hardware import plan_hardware  # noqa: PLC0415
    from autoft.advisor.question import Question  # noqa: PLC0415
    from autoft.advisor.recommend import advise  # noqa: PLC0415

    question = Question(**q)
    hw = plan_hardware(gpu=question.gpu, gpu_memory=question.gpu_memory, gpus=question.gpus)
    return advise(question, hw).to_dict()


def _get(rec: dict, *keys, default=None):
    for k in keys:
        if isinstance(rec, dict) and rec.get(k) is not None:
            return rec[k]
    return default


def display_name(model: str) -> str:
    """How to name a model to a person: its Hub id when a local folder knows it (the packaged
    demo model is all-MiniLM-L6-v2, not a site-packages path), else what was given."""
    from autoft.autotrain.card import base_model_id  # noqa: PLC0415

    hid = base_model_id(model)
    return model if not hid or hid == model else f"{hid} (from {model})" if len(model) < 40 else hid


def _model_id(rec: dict) -> str:
    m = rec.get("model")
    return m.get("id") if isinstance(m, dict) else str(m)


def _num_train(bundle) -> int:
    return len(bundle.splits["train"])


def _metric_for(bundle, task: str) -> tuple[str, bool]:
    """Selection metric: eval loss for generation; accuracy for balanced classes, macro-F1 when
    the majority class holds 60% or more (accuracy rewards predicting it)."""
    if task == "generation":
        return "eval_loss", False
    labels = [r.get("label") for r in bundle.splits["train"]]
    if labels:
        top = Counter(labels).most_common(1)[0][1] / len(labels)
        if top >= 0.6:
            return "macro_f1", True
    return "accuracy", True


def default_learning_rate(search_space: dict) -> float:
    lr = (search_space or {}).get("learning_rate") or (search_space or {}).get("lr")
    if isinstance(lr, dict) and lr.get("default") is not None:
        return float(lr["default"])
    d = parse_dim("learning_rate", lr) if lr is not None else None
    if d is not None and d.low and d.high:
        return float(f"{math.sqrt(d.low * d.high):.3g}")  # geometric middle of the range
    if isinstance(lr, (int, float)):
        return float(lr)
    return DEFAULT_HPARAMS["learning_rate"]


def fixed_config(rec: dict) -> dict:
    """Hyperparameters without a search: the middle of the recommended ranges."""
    cfg = dict(DEFAULT_HPARAMS)
    space = rec.get("search_space") or {}
    cfg["learning_rate"] = default_learning_rate(space)
    lora = rec.get("lora") or {}
    if isinstance(lora, dict):
        cfg["lora_r"] = int(_get(lora, "r", "rank", default=cfg["lora_r"]))
        cfg["lora_alpha"] = int(_get(lora, "alpha", "lora_alpha", default=2 * cfg["lora_r"]))
        cfg["lora_dropout"] = float(_get(lora, "dropout", "lora_dropout", default=cfg["lora_dropout"]))
    if rec.get("freeze_layers") is not None:
        cfg["freeze_layers"] = rec["freeze_layers"]
    return for_technique(cfg, rec.get("technique") or "")


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

class RunInterrupted(KeyboardInterrupt):
    """`should_stop()` said stop: handled like Ctrl-C (the output folder stays resumable)."""


def options_from_args(args) -> RunOptions:
    """RunOptions from the parsed `autoft run` arguments (autoft/cli/run.py)."""
    from autoft.advisor.question import Question  # noqa: PLC0415

    q = {f.name: getattr(args, f.name) for f in dataclasses.fields(Question) if hasattr(args, f.name)}
    q = {k: v for k, v in q.items() if v is not None}
    names = {f.name for f in dataclasses.fields(RunOptions)} - {"question", "recommendation"}
    kw = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return RunOptions(question=q, **kw)


def run_from_argv(argv: list[str], progress: Any = None, **kw) -> RunResult:
    """`autoft run <argv>` in this process (the TUI's entry point): same parser, same pipeline."""
    from autoft.cli import build_parser  # noqa: PLC0415

    args = build_parser().parse_args(["run", *argv])
    return run(options_from_args(args), progress=progress, argv=["autoft", "run", *argv], **kw)


def run(opts: RunOptions, progress: Progress | Callable[[dict], None] | None = None,
        confirm: Callable[[dict], bool] | None = None, trial_factory: Any = None,
        argv: list[str] | None = None, should_stop: Callable[[], bool] | None = None) -> RunResult:
    """Run (or resume) `autoft run`. `progress` is a Progress bus or one listener callable;
    `confirm(plan)` may veto the run after the recommendation (the CLI asks on a terminal unless
    --yes); `should_stop()` is polled at every logged step and stops the run like Ctrl-C (the
    folder stays resumable); `trial_factory` replaces `trainer.Trial` (tests)."""
    if progress is None:
        progress = Progress()
    elif not isinstance(progress, Progress):
        progress = Progress([progress])
    if should_stop is not None:
        def _stop_listener(ev: dict) -> None:
            if ev["kind"] == "step" and should_stop():
                raise RunInterrupted()
        progress.subscribe(_stop_listener)
    out = prepare_output(opts)
    try:
        return _run(opts, out, progress, confirm, trial_factory, argv)
    except KeyboardInterrupt:
        if (out / RUN_FILE).is_file():
            progress.emit("warning", text=f"interrupted: finished trials and the final run's last best checkpoint "
                          f"are saved; continue with "
                          f"autoft run --resume {shlex.quote(str(out))}")
        raise


def _run(opts: RunOptions, out: Path, progress: Progress, confirm, trial_factory, argv) -> RunResult:
    t_run = time.monotonic()
    if opts.resume:
        if (out / "metrics.json").is_file():
            raise AutoftError(f"the run in {out} already finished (it has metrics.json)",
                              "start a new run with another --output, or --overwrite it")
        saved = _read_json(out / RUN_FILE)["options"]
        saved.update(resume=str(out), output=None, overwrite=False, yes=True)
        opts = RunOptions(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(RunOptions)}})
        progress.emit("stage", name="resume", detail=f"continuing {out}")
    demo = opts.data is None
    q = dict(opts.question or {})
    if demo:
        from autoft.autotrain.demo import demo_model_path  # noqa: PLC0415

        q.setdefault("model", None)
        q["model"] = q["model"] or str(demo_model_path())
        q["gpu"] = q.get("gpu") or "auto"
        if opts.max_steps is None and opts.epochs is None:
            opts.max_steps = DEMO_DEFAULTS["max_steps"]
        if opts.min_steps is None:
            opts.min_steps = DEMO_DEFAULTS["min_steps"]
        if opts.search_trials == RunOptions.search_trials:
            opts.search_trials = DEMO_DEFAULTS["search_trials"]
        opts.eval_every = opts.eval_every or DEMO_DEFAULTS["eval_every"]
        opts.max_eval_examples = opts.max_eval_examples or DEMO_DEFAULTS["max_eval_examples"]
    command = build_command(opts, out)  # reproduces the run: every non-default option, the seed
    if not opts.resume:
        write_json(out / RUN_FILE, {"options": opts.to_dict(), "command": command,
                                    "typed": shlex.join(argv) if argv else None, "autoft_version": _version()})

    # -- data -----------------------------------------------------------------------------------
    progress.emit("stage", name="data", detail="built-in demo: banking77 slice" if demo else str(opts.data))
    bundle = _load_bundle(opts, q)
    task = getattr(bundle, "task", None) or q.get("task") or "classification"
    prof_fields, data_warnings = _profile(bundle)
    q = fill_unset(q, prof_fields)
    q["task"] = task
    for w in data_warnings:
        progress.emit("warning", text=str(w))

    # -- recommendation -------------------------------------------------------------------------
    if opts.recommendation is not None:
        rec = dict(opts.recommendation)
    elif opts.resume and (out / "recommendation.json").is_file():
        rec = _read_json(out / "recommendation.json")
    else:
        progress.emit("stage", name="advise", detail="choosing model, technique and batch size")
        from autoft.advisor.question import Question  # noqa: PLC0415

        valid = {f.name for f in dataclasses.fields(Question)}
        rec = _advise({k: v for k, v in q.items() if k in valid})
    write_json(out / "recommendation.json", rec)
    model_id, technique = _model_id(rec), rec["technique"]
    device = _device(opts.device, rec)
    precision = "fp32" if device == "cpu" else (rec.get("precision") or "bf16")
    batch_size = int(rec.get("batch_size") or 8)
    grad_accum = int(rec.get("gradient_accumulation_steps") or 1)
    seq_len = int(rec.get("seq_len") or 128)
    eff_batch = batch_size * grad_accum
    n_train = _num_train(bundle)
    steps_per_epoch = max(1, math.ceil(n_train / eff_batch))
    final_steps = int(opts.max_steps or math.ceil((opts.epochs or 3) * steps_per_epoch))
    metric, higher = _metric_for(bundle, task)
    n_trials = 1 if opts.no_search else opts.search_trials
    min_steps = opts.min_steps or max(1, min(100, final_steps // opts.eta))
    plan = {"model": model_id, "technique": technique, "task": task, "device": device, "precision": precision,
            "batch_size": batch_size, "grad_accum": grad_accum, "seq_len": seq_len, "final_steps": final_steps,
            "train_examples": n_train, "search_trials": n_trials, "min_steps": min_steps, "metric": metric,
            "output_dir": str(out)}
    progress.emit("stage", name="plan", detail=f"{display_name(model_id)} | {technique} | batch {batch_size}x{grad_accum} | "
                  f"seq {seq_len} tokens | {final_steps} final steps | {device} {precision}")
    if confirm is not None and not opts.yes and not confirm(plan):
        raise AutoftError("run cancelled", "pass --yes to skip the question")

    trial_kwargs = dict(model_source=model_id, bundle=bundle, task=task, technique=technique,
                        batch_size=batch_size, grad_accum=grad_accum, seq_len=seq_len, precision=precision,
                        gradient_checkpointing=bool(rec.get("gradient_checkpointing")), device=device,
                        optimizer=rec.get("optimizer") or "adamw", max_eval_examples=opts.max_eval_examples,
                        trust_remote_code=bool(q.get("trust_remote_code")))
    warnings = list(map(str, data_warnings))

    # -- search ---------------------------------------------------------------------------------
    search_res = None
    search_seconds = 0.0
    start = None  # where the final run starts: the search winner's checkpoint, or step 0
    step_cap = search_step_cap(final_steps)  # no rung so long that the final run has no room to decay
    if n_trials > 1 and step_cap >= min_steps:
        from autoft.autotrain.search import SearchSettings, run_search  # noqa: PLC0415

        settings = SearchSettings(n_trials=n_trials, eta=opts.eta, min_steps=min_steps,
                                  max_steps=step_cap,
                                  time_budget_s=parse_duration(opts.time_budget), seed=opts.seed, metric=metric,
                                  higher_is_better=higher,
                                  warmup_steps=warmup_steps(DEFAULT_HPARAMS["warmup_ratio"], final_steps),
                                  max_eval_examples=opts.max_eval_examples,
                                  warn_short_rungs=not demo)  # the demo's short rungs are on purpose
        search_res = run_search(trial_kwargs, rec.get("search_space") or {}, settings, out, progress,
                                trial_factory=trial_factory, technique=technique, base_config=fixed_config(rec))
        search_seconds = search_res.seconds
        warnings += search_res.warnings
        config = dict(search_res.best_config)
        if search_res.best_checkpoint:
            start = {"trial": search_res.best_trial, "checkpoint": search_res.best_checkpoint,
                     "steps": search_res.best_steps}
    else:
        if not opts.no_search:
            warnings.append(f"search skipped: its first rung ({min_steps} steps) does not fit in "
                            f"{step_cap} steps, {1 - MIN_DECAY_FRACTION:.0%} of the {final_steps} final steps")
        config = fixed_config(rec)

    # -- final fine-tune ------------------------------------------------------------------------
    final = _final_run(trial_kwargs, config, final_steps, opts, metric, higher, out, progress, trial_factory,
                       start=start)

    # -- outputs --------------------------------------------------------------------------------
    progress.emit("stage", name="save", detail=str(out))
    from autoft.autotrain import card, report  # noqa: PLC0415

    metrics = {"task": task, "metric": metric, "test": final["test"], "baseline": final["baseline"],
               "validation": final["validation"], "train_seconds": final["seconds"],
               "search_seconds": search_seconds, "final_steps": final["steps"], "planned_steps": final_steps,
               "stopped_early": final["stopped_early"], "best_step": final["best_step"],
               "train_samples_per_second": final["samples_per_second"], "config": config,
               "model": model_id, "technique": technique, "seed": opts.seed, "merged": bool(opts.merge),
               "precision": precision, "device": device, "batch_size": batch_size, "grad_accum": grad_accum,
               "best_trial": search_res.best_trial if search_res else None,
               "continued_from_step": final["continued_from_step"]}
    if final.get("samples"):
        metrics["samples"] = final["samples"]
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", final["history"])
    records = TrialStore.load(out / "trials.jsonl")
    card.write_card(out, rec=rec, metrics=metrics, bundle=bundle, data_name=_data_name(opts), command=command)
    report.write_report(out, rec=rec, metrics=metrics, records=records, history=final["history"],
                        search=search_res.to_dict() if search_res else None, command=command,
                        warnings=warnings)
    seconds = round(time.monotonic() - t_run, 2)
    progress.emit("done", output_dir=str(out), seconds=seconds)
    return RunResult(output_dir=str(out), model=model_id, technique=technique, task=task, config=config,
                     test=final["test"], baseline=final["baseline"], seconds=seconds,
                     search_seconds=search_seconds, train_seconds=final["seconds"],
                     best_trial=search_res.best_trial if search_res else None,
                     stopped_early=final["stopped_early"], command=command, warnings=warnings)


def _final_run(trial_kwargs: dict, config: dict, total: int, opts: RunOptions, metric: str, higher: bool,
               out: Path, progress: Progress, trial_factory: Any, start: dict | None = None) -> dict:
    """Train the chosen configuration for the full budget with linear decay; evaluate on
    validation every `eval_every` steps, keep the best weights, stop after `patience` evaluations
    without improvement; then test and baseline.

    With `start` (the search winner's checkpoint and its steps) the winner itself continues: its
    learning rate stayed constant through the search and now decays linearly from that step to 0
    at `total` (warmup-stable-decay, see schedule.search_step_cap). The search's steps count
    toward the budget instead of being trained again.

    Every new best is saved as a full checkpoint (weights, optimizer, scheduler, RNG, data
    position) in final-best/ with the run's bookkeeping (final-state.json). `--resume` continues
    from there: continuation is exact, so a resumed run ends where an uninterrupted one would, and
    loses at most the steps trained after the last best."""
    if trial_factory is None:
        from autoft.autotrain.trainer import Trial as trial_factory  # noqa: PLC0415, N813
    import torch  # noqa: PLC0415

    progress.emit("phase", name="final", total_steps=total)
    hparams = {k: v for k, v in config.items() if k != "warmup_ratio"}
    hparams["warmup_steps"] = warmup_steps(config.get("warmup_ratio", 0.06), total)
    kw = dict(trial_kwargs)
    # test and baseline always see the whole test split; only validation during training is capped
    kw.update(hparams=hparams, lr_schedule="linear", total_steps=total, seed=opts.seed, max_eval_examples=None)
    eval_every = opts.eval_every or max(10, math.ceil(total / 10))
    best_dir = out / FINAL_CKPT
    from_step = int(start["steps"]) if start else 0
    identity = {"config": config, "total_steps": total, "seed": opts.seed, "eval_every": eval_every,
                "continued_from_step": from_step}
    state = _final_state(best_dir, identity) if opts.resume else None
    if state is None:
        shutil.rmtree(best_dir, ignore_errors=True)  # a stale one from another configuration
        state = {"history": {"train": [], "validation": [], "eval_every": eval_every, "start_step": from_step},
                 "best": None, "best_step": 0, "samples": 0, "seconds": 0.0, "baseline": None}
        if start and kw["task"] == "generation":
            # the baseline is the base model: measure it before loading the trained winner
            base = trial_factory(**kw)
            try:
                state["baseline"] = base.baseline_eval("test")
            finally:
                base.close()
        if start:
            progress.emit("stage", name="final", detail=f"trial {start['trial']} continues from step {from_step} "
                          f"to {total}, lr {config['learning_rate']:.3g} decaying linearly from step {from_step}")
            trial = trial_factory.load_checkpoint(
                out / start["checkpoint"], trial_kwargs["bundle"], device=kw.get("device", "cpu"),
                lr_schedule="linear", total_steps=total, decay_start=from_step, max_eval_examples=None)
        else:
            progress.emit("stage", name="final", detail=f"{total} steps, lr {config['learning_rate']:.3g}, linear decay")
            trial = trial_factory(**kw)
    else:
        progress.emit("stage", name="final", detail=f"resuming at step {state['best_step']} of {total} "
                      f"(the last best checkpoint), lr {config['learning_rate']:.3g}, linear decay")
        trial = trial_factory.load_checkpoint(best_dir, trial_kwargs["bundle"], device=kw.get("device", "cpu"))
    history = state["history"]
    best, best_step, bad, stopped, samples = state["best"], state["best_step"], 0, False, state["samples"]
    t0 = time.monotonic() - float(state["seconds"])
    finished = False
    try:
        baseline = state["baseline"]
        if baseline is None:
            baseline = trial.baseline_eval("test")  # generation: the base model, before any training

        def on_step(info: dict) -> None:
            history["train"].append({"step": info.get("step"), "loss": info.get("loss"), "lr": info.get("lr")})
            progress.emit("step", phase="final", step=info.get("step"), total=total, loss=info.get("loss"),
                          lr=info.get("lr"), done_steps=info.get("step"))

        while trial.steps_done < total:
            n = min(eval_every, total - trial.steps_done)
            while True:
                try:
                    res = trial.train(n, on_step=on_step)
                    break
                except torch.OutOfMemoryError:
                    if trial.batch_size <= 1:
                        raise
                    from autoft.autotrain.search import smaller_micro_batch  # noqa: PLC0415

                    bs, acc = smaller_micro_batch(trial.batch_size, trial.grad_accum)
                    progress.emit("warning", text=f"final run ran out of memory: micro-batch {bs} x {acc} accumulation")
                    trial.set_micro_batch(bs, acc)
                    n = min(eval_every, total - trial.steps_done)
            samples += int(res.get("samples") or 0)
            ev = trial.evaluate("validation", max_examples=opts.max_eval_examples)
            val, val_loss = ev.get(metric), validation_loss(ev)
            history["validation"].append({"step": trial.steps_done, metric: val, "loss": val_loss})
            progress.emit("eval", phase="final", step=trial.steps_done, metric_name=metric, metric=val,
                          loss=val_loss)
            improved = val is not None and (best is None or (val > best if higher else val < best))
            if improved:
                best, best_step, bad = val, trial.steps_done, 0
                if trial.steps_done < total:  # the last step's weights are in memory already
                    _save_final_state(trial, best_dir, identity, {
                        "history": history, "best": best, "best_step": best_step, "samples": samples,
                        "seconds": round(time.monotonic() - t0, 2), "baseline": baseline})
            else:
                bad += 1
                if bad >= opts.patience:
                    stopped = True
                    progress.emit("message", text=f"early stop at step {trial.steps_done}: no better "
                                  f"validation {metric} for {bad} evaluations (best at step {best_step})")
                    break
        steps_trained = trial.steps_done
        train_seconds = round(time.monotonic() - t0, 2)
        if best_step and best_step != trial.steps_done and best_dir.exists():
            trial.restore(best_dir)  # keep the best weights, not the last
        progress.emit("stage", name="evaluate", detail="test split")
        validation = trial.evaluate("validation")
        test = trial.evaluate("test")
        gen_samples = None
        if kw["task"] == "generation":
            prompts = _prompts(trial_kwargs["bundle"], 3)
            if prompts:
                outs = trial.generate_samples(prompts)
                gen_samples = [{"prompt": p, "output": o} for p, o in zip(prompts, outs)]
        trial.save_model(out, merge=opts.merge)
        finished = True
    finally:
        trial.close()
        if finished:  # otherwise they stay for --resume
            shutil.rmtree(best_dir, ignore_errors=True)
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the search winner's
    return {"test": test, "baseline": baseline, "validation": validation, "seconds": train_seconds,
            "steps": steps_trained, "best_step": best_step or steps_trained, "stopped_early": stopped,
            "history": history, "samples": gen_samples, "continued_from_step": from_step,
            "samples_per_second": round(samples / train_seconds, 2) if train_seconds > 0 else None}


FINAL_CKPT = "final-best"
FINAL_STATE = "final-state.json"


def _save_final_state(trial: Any, best_dir: Path, identity: dict, state: dict) -> None:
    """Checkpoint the final run at a new best. The state file is written last, after the
    checkpoint is complete, and removed first: a kill mid-save leaves no state, so --resume then
    starts the final run over instead of reading a half-written checkpoint."""
    (best_dir / FINAL_STATE).unlink(missing_ok=True)
    trial.save_checkpoint(best_dir)
    write_json(best_dir / FINAL_STATE, {**identity, **state})


def _final_state(best_dir: Path, identity: dict) -> dict | None:
    """The saved state of an interrupted final run of this configuration, or None."""
    import json  # noqa: PLC0415

    try:
        state = json.loads((best_dir / FINAL_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if any(state.get(k) != v for k, v in identity.items()) or not (best_dir / "trial.json").is_file():
        return None
    return state


def _prompts(bundle, n: int) -> list[str]:
    out = []
    for r in bundle.splits.get("test", [])[:n]:
        msgs = r.get("messages") or []
        user = [m.get("content") for m in msgs if m.get("role") == "user"]
        if user:
            out.append(user[-1])
        elif r.get("prompt"):
            out.append(r["prompt"])
    return out


def _device(choice: str, rec: dict) -> str:
    import torch  # noqa: PLC0415

    if choice and choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


def _data_name(opts: RunOptions) -> str:
    return "banking77 (autoft demo slice)" if opts.data is None else str(opts.data)


def _read_json(path: Path) -> dict:
    import json  # noqa: PLC0415

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _version() -> str:
    from autoft import __version__  # noqa: PLC0415

    return __version__
