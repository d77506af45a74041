"""Successive-halving hyperparameter search over `Trial`s, persisted and resumable.

    result = run_search(trial_kwargs, search_space, SearchSettings(n_trials=9), out_dir, progress)

How it runs (one process, trials one after another):
- promotions rank trials by validation loss, the winner of the last rung by the user's metric
  (see `_rank`);
- configurations come from `schedule.sample_configs` (seeded), rungs from
  `schedule.successive_halving`; a trailing rung with a single trial is dropped (it decides
  nothing; its budget is better spent in the final run);
- every trial uses the same seed (common random numbers: same head initialisation and data order)
  so that rung comparisons measure the hyperparameters, not the luck of the draw;
- a trial trains with constant learning rate after warmup (decay only in the final run), is
  evaluated on the validation split, saves a checkpoint and is closed
  (`trial.close()` frees its memory) before the next one starts; a promoted trial is rebuilt
  from its checkpoint and *continues* to the next rung's budget;
- the winner's last checkpoint is kept (`SearchResult.best_checkpoint`): the final run continues
  it rather than training the same configuration again from step 0; every other is removed;
- every finished trial-rung is appended to `trials.jsonl` (`store.TrialStore`) at once; a resumed
  search skips the trial-rungs found there and continues promoted trials from their checkpoints;
- out of memory: half the micro-batch, double the accumulation (same effective batch) and retry;
  a NaN loss marks the trial failed; neither stops the search;
- `time_budget_s` caps the search: a trial-rung that would run past it is abandoned and the best
  trial of the highest rung reached wins.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from autoft.autotrain.evaluate import validation_loss
from autoft.autotrain.progress import Progress
from autoft.autotrain.schedule import Rung, sample_configs, successive_halving, total_cost_steps
from autoft.autotrain.store import OK_STATUSES, TrialStore, write_json
from autoft.errors import AutoftError

# Below this many steps a first rung mostly measures warmup noise (field notes section 3).
MIN_STEPS_ADVISED = 100


@dataclass
class SearchSettings:
    n_trials: int = 9
    eta: int = 3
    min_steps: int = 100
    max_steps: int | None = None  # cap of any rung's cumulative budget (the final run's steps)
    time_budget_s: float | None = None
    seed: int = 0
    metric: str = "accuracy"  # key of Trial.evaluate(): accuracy, macro_f1, eval_loss, loss
    higher_is_better: bool = True
    warmup_steps: int = 0  # in optimizer steps; kept inside the first rung
    max_eval_examples: int | None = None
    drop_single_last_rung: bool = True
    warn_short_rungs: bool = True  # warn when min_steps < MIN_STEPS_ADVISED
    # what decides promotions between rungs: "loss" (validation loss) or "metric"; the winner of
    # the last rung is always chosen by `metric`
    promote_by: str = "loss"

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise AutoftError(f"--search-trials must be at least 1, got {self.n_trials}", "pass --search-trials 9")
        if self.eta < 2:
            raise AutoftError(f"--eta must be at least 2, got {self.eta}", "pass --eta 3")
        if self.min_steps < 1:
            raise AutoftError(f"--min-steps must be at least 1, got {self.min_steps}", "pass --min-steps 100")
        if self.promote_by not in ("loss", "metric"):
            raise AutoftError(f"promote_by must be 'loss' or 'metric', got {self.promote_by!r}",
                              "use 'loss' (the default) or 'metric'")


@dataclass
class SearchResult:
    best_trial: int
    best_config: dict
    best_metric: float
    metric: str
    rungs: list[Rung]
    configs: list[dict]
    records: list[dict]
    seconds: float
    stopped_by_time: bool = False
    warnings: list[str] = field(default_factory=list)
    promote_by: str = "loss"
    # the winner's last checkpoint (relative to the search folder) and the steps it has trained;
    # None when it has none (a search written before checkpoints were kept in the last rung)
    best_checkpoint: str | None = None
    best_steps: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rungs"] = [asdict(r) for r in self.rungs]
        return d


class _OutOfTime(Exception):
    pass


def plan_rungs(s: SearchSettings) -> list[Rung]:
    rungs = successive_halving(s.n_trials, s.eta, s.min_steps, s.max_steps)
    if s.drop_single_last_rung and len(rungs) > 1 and rungs[-1].n_trials == 1:
        rungs = rungs[:-1]
    return rungs


def _is_oom(err: BaseException) -> bool:
    import torch  # noqa: PLC0415

    return isinstance(err, torch.OutOfMemoryError)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def smaller_micro_batch(bs: int, accum: int) -> tuple[int, int]:
    """After an OOM: about half the micro-batch with the same effective batch bs x accum (the
    largest divisor of it not above bs // 2)."""
    eff = bs * accum
    for d in range(max(1, bs // 2), 0, -1):
        if eff % d == 0:
            return d, eff // d
    return 1, eff


def _loss_of(r: dict) -> float:
    loss = validation_loss(r.get("eval"))
    return float("inf") if loss is None or loss != loss else float(loss)


def _rank(records: list[dict], higher_is_better: bool, by: str = "metric") -> list[dict]:
    """OK records, best first.

    by="metric": the user's metric; ties go to the lower validation loss (early rungs tie often:
    after a few steps every trial may still predict the majority class).
    by="loss": the validation loss; ties go to the metric. Promotions use this: early in training
    accuracy hovers at chance and ranks noise (at 13 steps on sst2 the two *lowest* learning rates
    had the best accuracy), while the loss already orders the trials by how fast they learn
    (benchmarks/results/search_quality_short_budget.json). Ties after both go to the lower trial id."""
    ok = [r for r in records if r.get("status") in OK_STATUSES and r.get("metric") is not None]
    sign = -1.0 if higher_is_better else 1.0
    if by not in ("metric", "loss"):
        raise ValueError(f"rank by 'metric' or 'loss', not {by!r}")

    def key(r: dict):
        m = sign * float(r["metric"])
        return (m, _loss_of(r), r["trial"]) if by == "metric" else (_loss_of(r), m, r["trial"])

    return sorted(ok, key=key)


def run_search(trial_kwargs: dict, search_space: dict, settings: SearchSettings,
               out_dir: str | os.PathLike, progress: Progress | None = None,
               trial_factory: Any = None, technique: str | None = None,
               base_config: dict | None = None) -> SearchResult:
    """Run (or resume) the search. `trial_kwargs` are the Trial constructor's arguments shared by
    all trials (model_source, bundle, task, technique, batch_size, grad_accum, seq_len, precision,
    gradient_checkpointing, device, ...). `trial_factory` defaults to `trainer.Trial` (tests pass
    a subclass). `base_config` gives the values of knobs that are not searched."""
    if trial_factory is None:
        from autoft.autotrain.trainer import Trial  # noqa: PLC0415

        trial_factory = Trial
    progress = progress or Progress()
    out = Path(out_dir)
    s = settings
    technique = technique or trial_kwargs.get("technique", "lora")
    configs = sample_configs(search_space, s.n_trials, seed=s.seed, technique=technique, base=base_config)
    rungs = plan_rungs(s)
    warnings: list[str] = []
    if s.warn_short_rungs and s.min_steps < MIN_STEPS_ADVISED:
        warnings.append(f"the first rung has only {s.min_steps} steps (under {MIN_STEPS_ADVISED}): "
                        "early rankings will be noisy; raise --min-steps on real runs")
    warmup = min(int(s.warmup_steps), max(0, s.min_steps // 2))  # warmup ends inside rung 1
    store = TrialStore(out / "trials.jsonl")
    # On resume the configurations must be the ones the store was written with.
    for rec in store.records:
        t = rec.get("trial")
        if isinstance(t, int) and (t >= len(configs) or rec.get("config") != configs[t]):
            raise AutoftError(f"{out / 'trials.jsonl'} was written by a different search (trial {t})",
                              "resume with the same settings, or start a new --output folder")
    write_json(out / "search.json", {"settings": asdict(s), "rungs": [asdict(r) for r in rungs],
                                     "configs": configs, "warmup_steps": warmup})
    for w in warnings:
        progress.emit("warning", text=w)

    t_start = time.monotonic()
    prior_seconds = store.search_seconds()  # time spent before a resume counts against the budget

    def elapsed() -> float:
        return prior_seconds + time.monotonic() - t_start

    total_steps = total_cost_steps(rungs)
    done_steps = sum(r.new_steps for r in rungs for (t, i) in store.finished() if i == r.index)
    progress.emit("phase", name="search", total_steps=total_steps)
    progress.emit("stage", name="search", detail=f"{s.n_trials} configurations, {len(rungs)} rungs, "
                  f"eta {s.eta}, {total_steps} optimizer steps in all"
                  + (f", {len(store.records)} trial-rungs already done" if store.records else ""))

    alive = list(range(len(configs)))
    stopped = False
    for rung in rungs:
        if rung.index > 0:
            prev = [store.get(t, rung.index - 1) for t in alive]
            ranked = _rank([r for r in prev if r], s.higher_is_better, by=s.promote_by)
            alive = sorted(r["trial"] for r in ranked[: rung.n_trials])
            if not alive:
                break
        progress.emit("rung_start", rung=rung.index, n_rungs=len(rungs), n_trials=len(alive),
                      budget_steps=rung.budget_steps)
        last = rung.index == rungs[-1].index
        for k, t in enumerate(alive):
            rec = store.get(t, rung.index)
            if rec is not None:
                progress.emit("trial_end", resumed=True, **rec)
                continue
            if s.time_budget_s is not None and elapsed() >= s.time_budget_s:
                stopped = True
                break
            progress.emit("trial_start", rung=rung.index, trial=t, index=k, n_trials=len(alive),
                          config=configs[t])
            try:
                rec = _run_trial_rung(trial_factory, trial_kwargs, configs[t], t, rung, s, warmup,
                                      store, out, progress, elapsed, done_steps)
            except _OutOfTime:
                stopped = True
                break
            done_steps += rung.new_steps
            progress.emit("trial_end", **rec)
        if stopped:
            progress.emit("warning", text=f"time budget of {s.time_budget_s:.0f} s reached: the search "
                          f"stops in rung {rung.index + 1}")
            break
        # the previous rung's checkpoints of trials not promoted are no longer needed
        if rung.index > 0:
            _drop_checkpoints(out, rung.index - 1)
        done = [store.get(t, rung.index) for t in alive if store.get(t, rung.index)]
        ranked = _rank(done, s.higher_is_better, by="metric" if last else s.promote_by)
        keep = 1 if last else rungs[rung.index + 1].n_trials
        progress.emit("rung_end", rung=rung.index, promoted=[r["trial"] for r in ranked[:keep]])

    # The winner: best OK trial of the highest rung that has any.
    best = None
    for rung in reversed(rungs):
        ranked = _rank([r for r in store.records if r.get("rung") == rung.index], s.higher_is_better)
        if ranked:
            best = ranked[0]
            break
    if best is None:
        statuses = sorted({r.get("status") for r in store.records})
        raise AutoftError(f"every search trial failed ({', '.join(statuses) or 'none finished'})",
                          "lower the learning-rate range, raise --time-budget or use --no-search")
    ckpt = best.get("checkpoint")
    if not (ckpt and (out / ckpt / "trial.json").is_file()):
        ckpt = None
    _drop_checkpoints_except(out, ckpt)
    return SearchResult(best_trial=best["trial"], best_config=configs[best["trial"]], best_metric=best["metric"],
                        metric=s.metric, rungs=rungs, configs=configs, records=list(store.records),
                        seconds=round(elapsed(), 2), stopped_by_time=stopped, warnings=warnings,
                        promote_by=s.promote_by, best_checkpoint=ckpt, best_steps=int(best["steps"]) if ckpt else 0)


def _ckpt_dir(out: Path, trial: int, rung: int) -> Path:
    return out / "checkpoints" / f"trial-{trial:03d}" / f"rung-{rung}"


def _drop_checkpoints(out: Path, rung: int) -> None:
    root = out / "checkpoints"
    if root.is_dir():
        for d in root.glob(f"trial-*/rung-{rung}"):
            shutil.rmtree(d, ignore_errors=True)


def _drop_checkpoints_except(out: Path, keep: str | None) -> None:
    """Remove every search checkpoint but `keep` (relative to out), and empty trial folders."""
    root = out / "checkpoints"
    if not root.is_dir():
        return
    keep_path = (out / keep).resolve() if keep else None
    for d in root.glob("trial-*/rung-*"):
        if d.resolve() != keep_path:
            shutil.rmtree(d, ignore_errors=True)
    for d in root.glob("trial-*"):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def _run_trial_rung(factory, trial_kwargs: dict, config: dict, t: int, rung: Rung, s: SearchSettings,
                    warmup: int, store: TrialStore, out: Path, progress: Progress,
                    elapsed: Callable[[], float], done_base: int) -> dict:
    prev = store.get(t, rung.index - 1) if rung.index > 0 else None
    bs = int((prev or {}).get("batch_size") or trial_kwargs.get("batch_size", 8))
    accum = int((prev or {}).get("grad_accum") or trial_kwargs.get("grad_accum", 1))
    status = "ok"
    metric = None
    evals: dict = {}
    ckpt = None
    t0 = time.monotonic()
    hparams = {k: v for k, v in config.items() if k != "warmup_ratio"}
    hparams["warmup_steps"] = warmup
    start_steps = rung.prev_budget_steps

    def on_step(info: dict) -> None:
        progress.emit("step", phase="search", rung=rung.index, trial=t, step=info.get("step"),
                      total=rung.budget_steps, loss=info.get("loss"), lr=info.get("lr"),
                      done_steps=done_base + int(info.get("step", start_steps)) - start_steps)
        if s.time_budget_s is not None and elapsed() >= s.time_budget_s:
            raise _OutOfTime()

    attempts = 0
    while True:
        trial = None
        attempts += 1
        try:
            if prev is not None:
                trial = factory.load_checkpoint(out / prev["checkpoint"], trial_kwargs["bundle"],
                                                device=trial_kwargs.get("device", "cpu"))
                if (trial.batch_size, trial.grad_accum) != (bs, accum):
                    trial.set_micro_batch(bs, accum)
            else:
                kw = dict(trial_kwargs)
                kw.update(batch_size=bs, grad_accum=accum, hparams=hparams, lr_schedule="constant",
                          seed=s.seed, warmup_steps=warmup)
                kw.setdefault("max_eval_examples", s.max_eval_examples)
                trial = factory(**kw)
            while trial.steps_done < rung.budget_steps:
                try:
                    trial.train(rung.budget_steps - trial.steps_done, on_step=on_step)
                except Exception as err:  # noqa: BLE001
                    if not _is_oom(err) or bs <= 1:
                        raise
                    # same effective batch, half the activation memory; redo the step
                    bs, accum = smaller_micro_batch(bs, accum)
                    status = "oom-retried"
                    _free_memory()
                    progress.emit("warning", text=f"trial {t} ran out of memory: retrying with "
                                  f"micro-batch {bs} x {accum} accumulation")
                    trial.set_micro_batch(bs, accum)
            evals = trial.evaluate("validation")
            metric = evals.get(s.metric)
            if metric is None or metric != metric:  # NaN metric: treat as diverged
                raise _diverged_type()(trial.steps_done, float("nan"))
            # (in the last rung too: the winner's checkpoint is where the final run starts)
            ckpt = _ckpt_dir(out, t, rung.index)
            trial.save_checkpoint(ckpt)
            ckpt = str(ckpt.relative_to(out))
            break
        except _OutOfTime:
            raise
        except Exception as err:  # noqa: BLE001
            if _is_diverged(err):
                status, metric = "failed-nan", None
                break
            if _is_oom(err):
                # OOM outside train() (building, restoring, evaluating): rebuild smaller
                if bs > 1 and attempts < 8:
                    bs, accum = smaller_micro_batch(bs, accum)
                    status = "oom-retried"
                    progress.emit("warning", text=f"trial {t} ran out of memory: retrying with "
                                  f"micro-batch {bs} x {accum} accumulation")
                    if trial is not None:
                        trial.close()
                        trial = None
                    _free_memory()
                    continue
                status, metric = "failed-oom", None
                break
            raise
        finally:
            if trial is not None:
                trial.close()  # frees the model, optimizer and the CUDA cache
    rec = {"trial": t, "rung": rung.index, "config": config, "steps": rung.budget_steps,
           "metric": metric, "metric_name": s.metric, "higher_is_better": s.higher_is_better,
           "eval": _small_eval(evals), "seconds": round(time.monotonic() - t0, 2), "status": status,
           "batch_size": bs, "grad_accum": accum, "checkpoint": ckpt}
    return store.append(rec)


def _small_eval(ev: dict) -> dict:
    """Scalar metrics only: per-class tables and confusion matrices belong to the final run."""
    return {k: v for k, v in (ev or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _diverged_type():
    from autoft.autotrain.trainer import TrialDiverged  # noqa: PLC0415

    return TrialDiverged


def _is_diverged(err: BaseException) -> bool:
    try:
        return isinstance(err, _diverged_type())
    except ImportError:  # pragma: no cover
        return False

