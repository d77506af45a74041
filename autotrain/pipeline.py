"""`autoft run` from start to end, one code path for the CLI and the TUI.

    result = run(RunOptions(data="train.csv", question={"gpu": "auto"}), progress=Progress([...]))

It reads top to bottom (`_run`): resolve the options (a resumed folder's saved ones, the demo's
defaults) -> data and its profile -> recommendation (the advisor, or one passed in, or the one
saved in a resumed folder) -> the run's typed plan (`plan.make_plan`) -> successive-halving
search (`search.run_search`) -> final fine-tune (`final.FinalRun`: the search's winner continued
from its checkpoint to the full budget with LR decay, or a fresh run without a search; early
stopping on validation, best weights kept) -> outputs: model, tokenizer, labels, metrics.json,
model card, report with plots, and the run's own options (`autoft-run.json`) with the exact
`autoft run ...` command that reproduces it.

Files in the output folder (the model is saved at its root, like a Trainer output folder, so
`PeftModel.from_pretrained(base, DIR)` / `AutoModel...from_pretrained(DIR)` load it directly):
    autoft-run.json, recommendation.json, search.json, trials.jsonl, metrics.json,
    history.json, README.md (model card), report.md, plots/*.png, model weights + tokenizer.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoft import __version__
from autoft.advisor.hardware import plan_hardware
from autoft.advisor.question import Question, fill_unset
from autoft.advisor.recommend import Recommendation, advise
from autoft.advisor.spec import SEQ2SEQ_TASKS
from autoft.autotrain import card, checkpoints, report
from autoft.autotrain.data import build_profile, load_data
from autoft.autotrain.demo import demo_data_path, demo_model_path
from autoft.autotrain.budget import BudgetSettings, Keeper, Measured, eval_cap, expected, plan_budget
from autoft.autotrain.final import GENERATION_TEST_EXAMPLES, SAMPLE_PROMPTS, FinalResult, FinalRun, Start, sample_prompts
from autoft.autotrain.options import DEFAULT_SEARCH_TRIALS, DEMO_DEFAULTS, RunOptions, command_line
from autoft.autotrain.plan import RunPlan, make_plan
from autoft.autotrain.probe import ProbedFactory, probe
from autoft.autotrain.progress import Progress, RunInterrupted
from autoft.autotrain.backends import get_backend
from autoft.autotrain.schedule import (DEFAULT_HPARAMS, parse_duration, sample_configs, trial_hparams,
                                       warmup_steps)
from autoft.autotrain.search import SearchOutOfTime, SearchResult, plan_rungs
from autoft.autotrain.store import TrialStore, write_json
from autoft.autotrain.tracking import make_trackers
from autoft.errors import AutoftError

__all__ = ["RunOptions", "RunResult", "RunInterrupted", "run", "prepare_output", "display_name"]

RUN_FILE = "autoft-run.json"
# What autoft writes into an output folder (--overwrite removes these and nothing else).
OUTPUT_NAMES = (RUN_FILE, "recommendation.json", "search.json", "trials.jsonl", "metrics.json",
                "history.json", "README.md", "report.md", "plots", checkpoints.SEARCH_DIR, checkpoints.FINAL_DIR,
                checkpoints.DIST_DIR,
                checkpoints.RAY_DIR,
                "adapter_model.safetensors", "adapter_config.json", "model.safetensors", "config.json",
                "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.txt", "labels.json", "chat_template.jinja", "merges.txt", "vocab.json")


@dataclass
class RunResult:
    """What a run produced: `metrics()` is metrics.json, `summary()` the `--json` object."""

    output_dir: str
    plan: RunPlan
    final: FinalResult
    config: dict  # the final run's hyperparameters
    seconds: float
    search_seconds: float
    best_trial: int | None = None
    command: str = ""
    warnings: list[str] = field(default_factory=list)
    budget: dict | None = None  # the time plan: predicted and actual seconds per phase

    # the names callers read
    model = property(lambda self: self.plan.trial.model)
    technique = property(lambda self: self.plan.trial.technique)
    task = property(lambda self: self.plan.trial.task)
    test = property(lambda self: self.final.test)
    baseline = property(lambda self: self.final.baseline)
    train_seconds = property(lambda self: self.final.seconds)
    stopped_early = property(lambda self: self.final.stopped_early)

    def metrics(self) -> dict:
        t, f = self.plan.trial, self.final
        m = {"task": t.task, "metric": self.plan.metric, "test": f.test, "baseline": f.baseline,
             "validation": f.validation, "train_seconds": f.seconds, "search_seconds": self.search_seconds,
             "final_steps": f.steps, "planned_steps": self.plan.final_steps, "stopped_early": f.stopped_early,
             "best_step": f.best_step, "train_samples_per_second": f.samples_per_second, "config": self.config,
             "model": t.model, "technique": t.technique, "seed": t.seed, "merged": self.plan.merge,
             "precision": t.precision, "device": t.device, "batch_size": t.batch_size,
             "grad_accum": t.grad_accum // (self.plan.dist.world if self.plan.dist else 1),
             "best_trial": self.best_trial, "continued_from_step": f.continued_from_step,
             "processes": self.plan.dist.world if self.plan.dist else 1, "effective_batch": t.effective_batch,
             "strategy": self.plan.dist.strategy if self.plan.dist else None}
        if f.samples:
            m["samples"] = f.samples
        if self.budget:
            m["budget"] = self.budget
        return m

    def to_dict(self) -> dict:  # what front ends read (the TUI's results screen)
        return self.summary()

    def summary(self) -> dict:
        """The `--json` object."""
        return {"output_dir": self.output_dir, "model": self.model, "technique": self.technique,
                "task": self.task, "config": self.config, "test": _scalars(self.test),
                "baseline": _scalars(self.baseline), "seconds": self.seconds,
                "search_seconds": self.search_seconds, "train_seconds": self.train_seconds,
                "best_trial": self.best_trial, "command": self.command, "warnings": self.warnings}


def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str)) or v is None}


def run(opts: RunOptions, progress: Progress | Callable[[dict], None] | None = None,
        confirm: Callable[[dict], bool] | None = None, trial_factory: Any = None,
        argv: list[str] | None = None, should_stop: Callable[[], bool] | None = None) -> RunResult:
    """Run (or resume) `autoft run`. `progress` is a Progress bus or one listener callable;
    `confirm(plan summary)` may veto the run after the recommendation (the CLI asks on a terminal
    unless --yes); `should_stop()` is polled at every logged step and stops the run like Ctrl-C
    (the folder stays resumable); `trial_factory` replaces `trainer.Trial` (tests); `argv` is the
    command line as typed (kept in autoft-run.json)."""
    progress = progress if isinstance(progress, Progress) else Progress([progress] if progress else [])
    if should_stop is not None:
        def _stop_listener(ev: dict) -> None:
            if ev["kind"] in ("step", "heartbeat") and should_stop():
                raise RunInterrupted()
        progress.subscribe(_stop_listener)
    out = prepare_output(opts)
    try:
        return _run(opts, out, progress, confirm, trial_factory, argv)
    except KeyboardInterrupt:
        if (out / RUN_FILE).is_file():
            progress.emit("warning", text=f"interrupted: finished trials and the final run's last best checkpoint "
                          f"are saved; continue with autoft run --resume {shlex.quote(str(out))}")
        raise


def _run(opts: RunOptions, out: Path, progress: Progress, confirm, trial_factory, argv) -> RunResult:
    t_run = time.monotonic()
    opts = resolve_options(opts, out, progress)
    get_backend(opts.search_backend).preflight(opts.parallel())  # Ray missing, a cluster that does not answer
    for tracker in make_trackers(opts.report_to, out):  # --report-to: listeners on the progress bus
        progress.subscribe(tracker)
    command = command_line(dataclasses.replace(opts, output=str(out), resume=None), always=("seed",))
    if not opts.resume:
        write_json(out / RUN_FILE, {"options": opts.to_dict(), "command": command,
                                    "typed": shlex.join(argv) if argv else None, "autoft_version": __version__})
    bundle, question, warnings = load_and_profile(opts, progress)
    rec = recommend(opts, out, question, progress)
    plan = make_plan(rec, opts, bundle, task=question["task"], device=_device(opts.device), demo=opts.data is None)
    announce(plan, out, progress, confirm if not opts.yes else None)
    keeper, probed, factory = None, None, trial_factory
    if not opts.resume:  # (a resumed run finishes the plan it started with)
        plan, keeper, probed = plan_time(plan, opts, bundle, out, progress, trial_factory, t_run)
        factory = ProbedFactory(_trial_factory(trial_factory), probed, plan.trial)
    warnings += [plan.skip_reason] if plan.skip_reason else []
    search_factory = factory
    if plan.parallel.backend != "local":  # Ray's workers build their own Trials: free the probe's model
        if probed is not None:
            probed.close()
        search_factory = trial_factory
    try:
        config, start, search = search_step(plan, bundle, out, progress, search_factory, keeper)
        warnings += search.warnings if search else []
        if search and probed is not None:
            probed.close()  # the probed Trial, when no search trial took it
        if plan.dist is not None:  # several processes: torch.distributed's launcher starts them (launch.py)
            from autoft.autotrain.launch import launch_final

            if probed is not None:
                probed.close()  # its memory goes back before the processes start
            final = launch_final(plan, opts, out, progress, config, start, resume=bool(opts.resume))
            shutil.rmtree(out / checkpoints.DIST_DIR, ignore_errors=True)  # kept only when it failed (logs)
        else:
            final = FinalRun(plan, bundle, out, progress, factory, keeper=keeper).run(
                config, start, resume=bool(opts.resume), baseline=probed.baseline if probed else None)
    finally:
        if probed is not None:
            probed.close()
    result = RunResult(output_dir=str(out), plan=plan, final=final, config=config,
                       seconds=0.0, search_seconds=search.seconds if search else 0.0,
                       best_trial=search.best_trial if search else None, command=command, warnings=warnings)
    t_save = time.monotonic()
    if keeper is not None:
        warnings += keeper.plan.warnings
        for phase, seconds in (("search", result.search_seconds), ("final", final.seconds),
                               ("evaluation", final.eval_seconds)):
            keeper.record(phase, seconds)
        result.budget = keeper.plan.to_dict()
    write_outputs(result, rec, bundle, search, _data_name(opts), progress)
    result.seconds = round(time.monotonic() - t_run, 2)
    if keeper is not None:  # saving: the model, then metrics, card and report
        keeper.record("save", final.save_seconds + time.monotonic() - t_save)
        result.budget = keeper.plan.to_dict()
        _write_budget(out, result)
    progress.emit("done", output_dir=str(out), seconds=result.seconds)
    return result


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------

def prepare_output(opts: RunOptions) -> Path:
    """The output folder: the resumed one, or a new or empty one (never a user's files)."""
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


def resolve_options(opts: RunOptions, out: Path, progress: Progress) -> RunOptions:
    """The options the run goes by: a resumed run's saved ones; the demo's defaults for what the
    demo leaves unset."""
    if opts.resume:
        if (out / "metrics.json").is_file():
            raise AutoftError(f"the run in {out} already finished (it has metrics.json)",
                              "start a new run with another --output, or --overwrite it")
        saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["options"]
        saved.update(resume=str(out), output=None, overwrite=False, yes=True)
        opts = RunOptions(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(RunOptions)}})
        progress.emit("stage", name="resume", detail=f"continuing {out}")
    if opts.data is None:  # the demo: small enough for a few minutes on 2 CPU cores
        demo = dict(DEMO_DEFAULTS)
        if opts.max_steps is not None or opts.epochs is not None:
            del demo["max_steps"]
        opts = dataclasses.replace(opts, **{k: v for k, v in demo.items() if getattr(opts, k) is None})
    return opts


def load_and_profile(opts: RunOptions, progress: Progress) -> tuple[Any, dict, list[str]]:
    """(data bundle, the advisor's question with what the data says filled in, data warnings)."""
    demo = opts.data is None
    q = dict(opts.question or {})
    if demo:
        q["model"] = q.get("model") or str(demo_model_path())
        q["gpu"] = q.get("gpu") or "auto"
    progress.emit("stage", name="data", detail="built-in demo: banking77 slice" if demo else str(opts.data))
    bundle = load_data(str(demo_data_path()) if demo else opts.data, task=q.get("task"), **opts.data_columns())
    profile = build_profile(bundle)
    q = fill_unset(q, profile.to_question_fields())
    q["task"] = getattr(bundle, "task", None) or q.get("task") or "classification"
    warnings = [str(w) for w in profile.warnings]
    for w in warnings:
        progress.emit("warning", text=w)
    return bundle, q, warnings


def recommend(opts: RunOptions, out: Path, question: dict, progress: Progress) -> Recommendation:
    """The recommendation the run follows (saved as recommendation.json)."""
    if opts.recommendation is not None:
        given = opts.recommendation
    elif opts.resume and (out / "recommendation.json").is_file():
        given = json.loads((out / "recommendation.json").read_text(encoding="utf-8"))
    else:
        progress.emit("stage", name="advise", detail="choosing model, technique and batch size")
        names = {f.name for f in dataclasses.fields(Question)}
        given = _advise({k: v for k, v in question.items() if k in names})
    rec = Recommendation.from_dict(given)
    write_json(out / "recommendation.json", rec.to_dict())
    return rec


def _advise(q: dict) -> dict:
    question = Question(**q)
    return advise(question, plan_hardware(question.gpu, question.gpu_memory, question.gpus)).to_dict()


def announce(plan: RunPlan, out: Path, progress: Progress, confirm: Callable[[dict], bool] | None) -> None:
    t = plan.trial
    batch = f"{t.batch_size}x{t.grad_accum}"
    if plan.dist:  # micro-batch x accumulation per process x processes
        batch = f"{t.batch_size}x{t.grad_accum // plan.dist.world}x{plan.dist.world} processes ({plan.dist.strategy})"
    progress.emit("stage", name="plan", detail=f"{display_name(t.model)} | {t.technique} | batch {batch} | "
                  f"seq {t.seq_len} tokens | {plan.final_steps} final steps | {t.device} {t.precision}")
    if confirm is not None and not confirm(plan.summary(str(out))):
        raise AutoftError("run cancelled", "pass --yes to skip the question")


def plan_time(plan: RunPlan, opts: RunOptions, bundle, out: Path, progress: Progress, trial_factory, t_run: float):
    """Time a few real steps of the first trial (it continues them), predict every phase, and with
    --time-budget choose the work that fits the whole run in it (or refuse a budget too small, with
    the least that works). Returns (plan, Keeper, ProbeResult)."""
    budget_s = parse_duration(opts.time_budget)
    generative = plan.trial.task != "classification"
    n_val, n_test = len(bundle.splits["validation"]), len(bundle.splits["test"])
    base = (f"the base model's loss on the {'first examples' if budget_s else f'{n_test} examples'} of the test "
            "split (the baseline), then " if generative else "")
    progress.emit("stage", name="probe", detail=f"{base}timing a few real steps (the first trial keeps them)")
    # The probed Trial goes on as the first trial (or the final run): its steps stay before the
    # first rung's end, and before the final run's first validation, which must not be skipped.
    first = plan.search.min_steps if plan.search else min(plan.final_steps, plan.eval_every)
    # with a budget every step is timed (the first, slower one too) and checked against the budget
    warmup = 1 if first > 2 and not budget_s else 0
    steps = max(1, min(2 if budget_s else 3, first - 1 - warmup))
    schedule = None if plan.search else {"lr_schedule": "linear", "total_steps": plan.final_steps}
    n_trials = 1 if opts.no_search else (opts.search_trials or DEFAULT_SEARCH_TRIALS)
    floor = plan.dist.world if plan.dist else 1  # each process keeps one micro-batch per step
    cap: list[int | None] = [None]

    def settings(accum: int, trained: int = 0) -> BudgetSettings:
        c = cap[0]
        return BudgetSettings(final_steps_wanted=plan.final_steps, n_val=min(n_val, c or n_val),
                              n_test=min(n_test, c or n_test), max_configs=n_trials, eta=opts.eta,
                              rung_target=opts.min_steps or 100,
                              val_examples=min(x for x in (plan.trial.max_eval_examples, c, n_val) if x),
                              grad_accum=accum, min_grad_accum=floor if budget_s else accum,
                              trained_steps=trained, eval_cap=c, gen_examples=gen_examples(),
                              gen_passes=gen_passes, batch_size=plan.trial.batch_size)

    samples = sample_prompts(bundle, SAMPLE_PROMPTS) if plan.trial.task == "generation" else []
    # models that generate: the tuned and the base for seq2seq scores, the tuned alone for samples
    gen_passes = 2 if plan.trial.task in SEQ2SEQ_TASKS else 1

    def gen_examples() -> int:  # test examples generated for: scores (summarization, translation) or samples
        if plan.trial.task not in SEQ2SEQ_TASKS:
            return len(samples)
        return min(n_test, plan.trial.max_eval_examples or GENERATION_TEST_EXAMPLES, cap[0] or n_test)

    def sizing(eval_s: float, gen_s: float = 0.0) -> int | None:  # the evaluation's share of the budget
        cap[0] = eval_cap(budget_s, eval_s, n_val, n_test, baseline=generative, gen_s_per_example=gen_s,
                          gen_examples=gen_examples() if plan.trial.task in SEQ2SEQ_TASKS else 0,
                          gen_passes=gen_passes)
        n = min(n_test, cap[0] or n_test)
        progress.emit("message", text=f"evaluation takes {eval_s:.2g} s per example: "
                      + (f"the base model's loss on {n} test examples next" if generative else
                         f"validation and test on {cap[0] or 'all'} examples each"))
        return cap[0]

    advised = plan.trial.grad_accum

    def check(step_s: float, eval_s: float, build_s: float, timed: int) -> None:  # refuse at once
        # the probe times steps of the least accumulation (`floor`): as a step of the advised one,
        # from which the planner cuts the batch
        m = Measured(step_s=step_s * advised / floor, eval_s_per_example=eval_s, trial_overhead_s=build_s)
        try:
            plan_budget(budget_s, m, settings(advised), elapsed_s=time.monotonic() - t_run)
        except AutoftError:
            if timed > 1:
                raise  # a warm step at the least batch does not fit either: refuse now
            # the first step runs cold (allocations): time a warm one before refusing

    # with a budget the probe times steps of the least accumulation (a step of A micro-batches costs
    # about A of them): cheap to measure, and the planner chooses the accumulation from there
    probe_spec = dataclasses.replace(plan.trial, grad_accum=floor) if budget_s else plan.trial
    probed = probe(probe_spec, bundle, _first_hparams(plan), warmup=warmup, steps=steps, schedule=schedule,
                   eval_examples=min(64, n_val), baseline=generative,
                   factory=_trial_factory(trial_factory), scratch=str(out),
                   sizing=sizing if budget_s else None, check=check if budget_s else None, sample_prompts=samples)
    elapsed = time.monotonic() - t_run
    try:
        if budget_s:
            bp = _fit_budget(budget_s, probed, settings(advised, probed.steps_done), advised, elapsed)
        else:
            rungs = plan_rungs(plan.search) if plan.search else []
            horizon = rungs[0].budget_steps if rungs else plan.final_steps
            m = dataclasses.replace(probed.measured(), step_s=probed.step_s_over(probed.trial, horizon, advised))
            bp = expected(rungs, plan.final_steps, m, settings(advised, probed.steps_done), elapsed_s=elapsed)
    except BaseException:
        probed.close()
        raise
    keeper = Keeper(bp, clock=lambda: time.monotonic() - t_run, warn=lambda text: progress.emit("warning", text=text))
    if budget_s:
        plan = plan.with_budget(bp, search_cap_s=keeper.search_cap_s())
        probed.trial.set_batch(plan.trial.batch_size, plan.trial.grad_accum)  # the plan's cut, if any
        probed.trial.max_eval_examples = plan.trial.max_eval_examples
    progress.emit("stage", name="time", detail=bp.text())
    for w in bp.warnings:
        progress.emit("warning", text=w)
    return plan, keeper, probed


def _fit_budget(budget_s: float, probed, settings: BudgetSettings, advised: int, elapsed: float):
    """The budget plan with the step time of the steps it will train: the stream's first steps
    hold its longest examples, so a shorter run costs more per step. Start from an epoch's mean
    step and re-plan with the mean over the plan's own horizon (a trial's first rung, or the final
    run) until the step time stops growing (it only grows as the horizon shrinks)."""
    full = settings.batch_size * advised  # the advised effective batch: the planner scales from it
    m = dataclasses.replace(probed.measured(), step_s=probed.step_s_over(probed.trial, None, advised, settings.batch_size))
    bp = plan_budget(budget_s, m, settings, elapsed_s=elapsed)
    for _ in range(5):
        horizon = bp.rungs[0].budget_steps if bp.rungs else bp.final_steps
        step = (probed.step_s_over(probed.trial, horizon, bp.grad_accum, bp.batch_size)
                * full / (bp.batch_size * bp.grad_accum))
        if step <= m.step_s * 1.001:
            break
        m = dataclasses.replace(m, step_s=step)
        bp = plan_budget(budget_s, m, settings, elapsed_s=elapsed)
    return bp


def _first_hparams(plan: RunPlan) -> dict:
    """The hyperparameters of the run's first trial: the search's first configuration, or the
    recommended one without a search (what the probe trains, so that trial continues it)."""
    if plan.search is None:
        return trial_hparams(plan.base_config, warmup_steps(plan.base_config.get(
            "warmup_ratio", DEFAULT_HPARAMS["warmup_ratio"]), plan.final_steps))
    s = plan.search
    first = sample_configs(plan.search_space, s.n_trials, seed=s.seed, technique=plan.trial.technique,
                           base=plan.base_config)[0]
    return trial_hparams(first, s.warmup)


def _trial_factory(given):
    if given is not None:
        return given
    from autoft.autotrain.trainer import Trial  # noqa: PLC0415  (torch: only once a run starts)

    return Trial


def search_step(plan: RunPlan, bundle, out: Path, progress: Progress, trial_factory, keeper: Keeper | None = None
                ) -> tuple[dict, Start | None, SearchResult | None]:
    """(the configuration the final run trains, where it starts, the search's result): the
    search's winner, or the recommended configuration when there is no search (or the time budget
    ran out before any trial finished: never nothing trained)."""
    if plan.search is None:
        return dict(plan.base_config), None, None
    backend = get_backend(plan.parallel.backend)  # local: in this process; ray: Ray Tune (backends.py)
    try:
        res = backend.run(plan.parallel, plan.trial, bundle, plan.search_space, plan.search, out, progress,
                          trial_factory=trial_factory, base_config=plan.base_config,
                          on_rung_end=keeper.after_rung if keeper is not None and keeper.budgeted else None)
    except SearchOutOfTime as err:
        progress.emit("warning", text=f"{err.what}: the recommended configuration trains without a search")
        return dict(plan.base_config), None, None
    start = Start(res.best_trial, res.best_checkpoint, res.best_steps) if res.best_checkpoint else None
    return dict(res.best_config), start, res


def _write_budget(out: Path, result: RunResult) -> None:
    """The time plan, predicted vs actual per phase, in search.json too (when a search ran)."""
    path = out / "search.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        data["budget"] = result.budget
        write_json(path, data)
    write_json(out / "metrics.json", result.metrics())


def write_outputs(result: RunResult, rec: Recommendation, bundle, search: SearchResult | None, data_name: str,
                  progress: Progress) -> None:
    out = Path(result.output_dir)
    progress.emit("stage", name="save", detail=str(out))
    metrics = result.metrics()
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", result.final.history)
    rec_d = rec.to_dict()
    card.write_card(out, rec=rec_d, metrics=metrics, bundle=bundle, data_name=data_name, command=result.command)
    report.write_report(out, rec=rec_d, metrics=metrics, records=TrialStore.load(out / "trials.jsonl"),
                        history=result.final.history, search=search.to_dict() if search else None,
                        command=result.command, warnings=result.warnings)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def display_name(model: str) -> str:
    """How to name a model to a person: its Hub id when a local folder knows it (the packaged
    demo model is all-MiniLM-L6-v2, not a site-packages path), else what was given."""
    hid = card.base_model_id(model)
    return model if not hid or hid == model else f"{hid} (from {model})" if len(model) < 40 else hid


def _device(choice: str) -> str:
    from autoft.autotrain.trainer import resolve_device  # noqa: PLC0415  (torch: only once a run starts)

    return resolve_device(choice)


def _data_name(opts: RunOptions) -> str:
    return "banking77 (autoft demo slice)" if opts.data is None else str(opts.data)
