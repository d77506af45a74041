"""Successive-halving hyperparameter search over `Trial`s, persisted and resumable.

    result = run_search(plan.trial, bundle, search_space, SearchSettings(n_trials=9), out_dir, progress)

How it runs here (the `local` backend: one process, trials one after another; the `ray` backend,
`search_ray.py`, runs the same `run_trial_rung` on Ray Tune):
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
  from its checkpoint and *continues* to the next rung's budget (`run_trial_rung`);
- the winner's last checkpoint is kept (`SearchResult.best_checkpoint`): the final run continues
  it rather than training the same configuration again from step 0; every other is removed;
- every finished trial-rung is appended to `trials.jsonl` (`store.TrialStore`) at once; a resumed
  search skips the trial-rungs found there and continues promoted trials from their checkpoints;
- out of memory: the Trial's own back-off (half the micro-batch, same effective batch) and the
  record says "oom-retried"; out of memory at micro-batch 1, or a NaN loss, fails the trial;
  neither stops the search;
- `time_budget_s` caps the search: a trial-rung that would run past it is abandoned and the best
  trial of the highest rung reached wins.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autoft.advisor.spec import check_at_least
from autoft.autotrain import checkpoints
from autoft.autotrain.checkpoints import TrialDiverged
from autoft.autotrain.evaluate import validation_loss
from autoft.autotrain.progress import Progress
from autoft.autotrain.schedule import Rung, sample_configs, successive_halving, total_cost_steps, trial_hparams
from autoft.autotrain.store import OK_STATUSES, TrialStore, write_json
from autoft.errors import AutoftError

if TYPE_CHECKING:
    from autoft.autotrain.plan import TrialSpec

# Below this many steps a first rung mostly measures warmup noise (field notes section 3).
MIN_STEPS_ADVISED = 100


@dataclass
class SearchSettings:
    n_trials: int = 9
    eta: int = 3
    min_steps: int = 100
    max_steps: int | None = None  # cap of any rung's cumulative budget
    time_budget_s: float | None = None
    seed: int = 0  # configuration sampling
    metric: str = "accuracy"  # key of Trial.evaluate(): accuracy, macro_f1, eval_loss, loss
    higher_is_better: bool = True
    warmup_steps: int = 0  # in optimizer steps; kept inside the first rung
    drop_single_last_rung: bool = True
    warn_short_rungs: bool = True  # warn when min_steps < MIN_STEPS_ADVISED
    # what decides promotions between rungs: "loss" (validation loss) or "metric"; the winner of
    # the last rung is always chosen by `metric`
    promote_by: str = "loss"

    def __post_init__(self) -> None:
        check_at_least("--search-trials", self.n_trials, 1)
        check_at_least("--eta", self.eta, 2, fix="pass --eta 3")
        check_at_least("--min-steps", self.min_steps, 1)
        if self.promote_by not in ("loss", "metric"):
            raise AutoftError(f"promote_by must be 'loss' or 'metric', got {self.promote_by!r}",
                              "use 'loss' (the default) or 'metric'")

    @property
    def warmup(self) -> int:
        """Warmup steps of every trial: it ends inside the first rung."""
        return min(int(self.warmup_steps), max(0, self.min_steps // 2))


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
    # where and how the trials ran (search.json says the same)
    backend: str = "local"
    scheduler: str = "synchronous successive halving"
    trials_at_once: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rungs"] = [asdict(r) for r in self.rungs]
        return d


class _OutOfTime(Exception):
    pass


class SearchOutOfTime(AutoftError):
    """The time budget ran out before any trial-rung finished: the run trains without a search."""


def plan_rungs(s: SearchSettings) -> list[Rung]:
    rungs = successive_halving(s.n_trials, s.eta, s.min_steps, s.max_steps)
    if s.drop_single_last_rung and len(rungs) > 1 and rungs[-1].n_trials == 1:
        rungs = rungs[:-1]
    return rungs


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


def run_search(spec: "TrialSpec", bundle: Any, search_space: dict, settings: SearchSettings,
               out_dir: str | os.PathLike, progress: Progress | None = None,
               trial_factory: Any = None, base_config: dict | None = None,
               on_rung_end: Callable[[int, list[dict]], list[Rung]] | None = None) -> SearchResult:
    """Run (or resume) the search: every trial is `spec` (the run's model and setup) with one
    sampled configuration. `trial_factory` defaults to `trainer.Trial` (tests pass a subclass).
    `base_config` gives the values of knobs that are not searched. `on_rung_end(index, records)`
    may return the rungs from then on (the same budgets; fewer trials or fewer rungs): a time
    budget re-plans there."""
    return _Search(spec, bundle, search_space, settings, Path(out_dir), progress or Progress(),
                   trial_factory, base_config, on_rung_end).run()


class _Search:
    """One search: its configurations, rungs and store, run rung by rung."""

    def __init__(self, spec, bundle, search_space, s: SearchSettings, out: Path, progress: Progress,
                 factory, base_config, on_rung_end=None):
        if factory is None:
            from autoft.autotrain.trainer import Trial as factory  # noqa: N813  (torch, on first use)
        self.spec, self.bundle, self.s, self.out, self.progress, self.factory = spec, bundle, s, out, progress, factory
        self.configs = sample_configs(search_space, s.n_trials, seed=s.seed, technique=spec.technique,
                                      base=base_config)
        self.rungs = plan_rungs(s)
        self.on_rung_end = on_rung_end
        self.store = TrialStore(out / "trials.jsonl")
        self.warnings: list[str] = []
        if s.warn_short_rungs and s.min_steps < MIN_STEPS_ADVISED:
            self.warnings.append(f"the first rung has only {s.min_steps} steps (under {MIN_STEPS_ADVISED}): "
                                 "early rankings will be noisy; raise --min-steps on real runs")
        # On resume the configurations must be the ones the store was written with.
        for record in self.store.records:
            t = record.get("trial")
            if isinstance(t, int) and (t >= len(self.configs) or record.get("config") != self.configs[t]):
                raise AutoftError(f"{out / 'trials.jsonl'} was written by a different search (trial {t})",
                                  "resume with the same settings, or start a new --output folder")
        self.t_start = time.monotonic()
        self.prior_seconds = self.store.search_seconds()  # time spent before a resume counts
        self.done_steps = sum(r.new_steps for r in self.rungs for (_, i) in self.store.finished() if i == r.index)

    def elapsed(self) -> float:
        return self.prior_seconds + time.monotonic() - self.t_start

    # where and how the trials run: search.json and SearchResult carry it (a backend overrides it)
    backend, scheduler, trials_at_once = "local", "synchronous successive halving", 1

    def announce(self, where: str = "") -> None:
        """search.json (the schedule, the configurations, where the trials run) and the search's
        first events."""
        s, progress = self.s, self.progress
        write_json(self.out / "search.json", {"settings": asdict(s), "rungs": [asdict(r) for r in self.rungs],
                                              "configs": self.configs, "warmup_steps": s.warmup,
                                              **self.describe()})
        for w in self.warnings:
            progress.emit("warning", text=w)
        total = total_cost_steps(self.rungs)
        progress.emit("phase", name="search", total_steps=total)
        progress.emit("stage", name="search", detail=f"{s.n_trials} configurations, {len(self.rungs)} rungs, "
                      f"eta {s.eta}, {total} optimizer steps in all{where}"
                      + (f", {len(self.store.records)} trial-rungs already done" if self.store.records else ""))

    def describe(self) -> dict:
        return {"backend": self.backend, "scheduler": self.scheduler, "trials_at_once": self.trials_at_once}

    def run(self) -> SearchResult:
        s, progress = self.s, self.progress
        self.announce()
        alive, stopped, i = list(range(len(self.configs))), False, 0
        while i < len(self.rungs):  # (a time budget may cut the rungs after each one: on_rung_end)
            rung = self.rungs[i]
            if rung.index > 0:
                alive = self._promoted(alive, rung)
                if not alive:
                    break
            stopped = self._run_rung(rung, alive)
            if stopped:
                progress.emit("warning", text=f"time budget of {s.time_budget_s:.0f} s reached: the search "
                              f"stops in rung {rung.index + 1}")
                break
            if rung.index > 0:  # the previous rung's checkpoints of trials not promoted
                checkpoints.drop_rung(self.out, rung.index - 1)
            if self.on_rung_end is not None:
                self.rungs = self.rungs[:i + 1] + list(self.on_rung_end(rung.index, self.store.records))[i + 1:]
            last = rung.index == self.rungs[-1].index
            done = [r for r in (self.store.get(t, rung.index) for t in alive) if r]
            ranked = _rank(done, s.higher_is_better, by="metric" if last else s.promote_by)
            keep = 1 if last else self.rungs[rung.index + 1].n_trials
            progress.emit("rung_end", rung=rung.index, promoted=[r["trial"] for r in ranked[:keep]])
            i += 1
        return self._result(stopped)

    def _promoted(self, alive: list[int], rung: Rung) -> list[int]:
        prev = [r for r in (self.store.get(t, rung.index - 1) for t in alive) if r]
        ranked = _rank(prev, self.s.higher_is_better, by=self.s.promote_by)
        return sorted(r["trial"] for r in ranked[: rung.n_trials])

    def _run_rung(self, rung: Rung, alive: list[int]) -> bool:
        """Train the rung's trials; True when the time budget stopped it."""
        s, progress = self.s, self.progress
        progress.emit("rung_start", rung=rung.index, n_rungs=len(self.rungs), n_trials=len(alive),
                      budget_steps=rung.budget_steps)
        for k, t in enumerate(alive):
            record = self.store.get(t, rung.index)
            if record is not None:
                progress.emit("trial_end", resumed=True, **record)
                continue
            if s.time_budget_s is not None and self.elapsed() >= s.time_budget_s:
                return True
            progress.emit("trial_start", rung=rung.index, trial=t, index=k, n_trials=len(alive),
                          config=self.configs[t])
            try:
                record = run_trial_rung(self.factory, self.spec, self.bundle, self.configs[t], t, rung, s,
                                     self.out, self.store.get(t, rung.index - 1), self._on_step(t, rung),
                                     warn=lambda text: progress.emit("warning", text=text))
            except _OutOfTime:
                return True
            record = self.store.append(record)
            self.done_steps += rung.new_steps
            progress.emit("trial_end", **record)
        return False

    def _on_step(self, t: int, rung: Rung) -> Callable[[dict], None]:
        base, start = self.done_steps, rung.prev_budget_steps

        def on_step(info: dict) -> None:
            self.progress.emit("step", phase="search", rung=rung.index, trial=t, step=info.get("step"),
                               total=rung.budget_steps, loss=info.get("loss"), lr=info.get("lr"),
                               done_steps=base + int(info.get("step", start)) - start)
            if self.s.time_budget_s is not None and self.elapsed() >= self.s.time_budget_s:
                raise _OutOfTime()

        return on_step

    def winner(self, stopped: bool = False) -> dict:
        """The winner's record: the best OK trial of the highest rung that has any."""
        for rung in reversed(self.rungs):
            ranked = _rank([r for r in self.store.records if r.get("rung") == rung.index], self.s.higher_is_better)
            if ranked:
                return ranked[0]
        statuses = sorted({r.get("status") for r in self.store.records})
        if stopped and not self.store.records:
            raise SearchOutOfTime("the time budget ran out before any search trial finished",
                                  "raise --time-budget")
        raise AutoftError(f"every search trial failed ({', '.join(statuses) or 'none finished'})",
                          "lower the learning-rate range, raise --time-budget or use --no-search")

    def _result(self, stopped: bool) -> SearchResult:
        best = self.winner(stopped)
        ckpt = best.get("checkpoint")
        if not (ckpt and checkpoints.is_complete(self.out / ckpt)):
            ckpt = None
        checkpoints.drop_search(self.out, keep=ckpt)
        return SearchResult(best_trial=best["trial"], best_config=self.configs[best["trial"]],
                            best_metric=best["metric"], metric=self.s.metric, rungs=self.rungs,
                            configs=self.configs, records=list(self.store.records), seconds=round(self.elapsed(), 2),
                            stopped_by_time=stopped, warnings=self.warnings, promote_by=self.s.promote_by,
                            best_checkpoint=ckpt, best_steps=int(best["steps"]) if ckpt else 0,
                            backend=self.backend, scheduler=self.scheduler, trials_at_once=self.trials_at_once)


def run_trial_rung(factory, spec: "TrialSpec", bundle: Any, config: dict, t: int, rung: Rung, s: SearchSettings,
                   out: Path, prev: dict | None, on_step: Callable[[dict], None],
                   warn: Callable[[str], None] = lambda text: None) -> dict:
    """Train trial `t` (configuration `config`) to the rung's budget - from scratch in the first
    rung, else continuing its previous rung's checkpoint (`prev`, that rung's record) - evaluate
    it, checkpoint it, and return the trial-rung's record (not yet stored). The unit of work of
    every search backend."""
    status, metric, evals, ckpt = "ok", None, {}, None
    t0, started_at = time.monotonic(), time.time()
    trial = None
    try:
        trial = _trial_for_rung(factory, spec, bundle, config, s, out, prev)
        trial.on_backoff = lambda bs, acc: warn(f"trial {t} ran out of memory: retrying with "
                                                f"micro-batch {bs} x {acc} accumulation")
        backoffs = trial.backoffs
        trial.train(rung.budget_steps - trial.steps_done, on_step=on_step)
        evals = trial.evaluate("validation")
        metric = evals.get(s.metric)
        if metric is None or metric != metric:  # NaN metric: treat as diverged
            raise TrialDiverged(trial.steps_done, float("nan"))
        if trial.backoffs > backoffs or (prev or {}).get("status") == "oom-retried":
            status = "oom-retried"
        # (in the last rung too: the winner's checkpoint is where the final run starts)
        path = checkpoints.search_dir(out, t, rung.index)
        trial.save_checkpoint(path)
        ckpt = str(path.relative_to(out))
    except TrialDiverged:
        status, metric = "failed-nan", None
    except Exception as err:  # noqa: BLE001
        if not _is_oom(err):
            raise
        status, metric = "failed-oom", None  # even micro-batch 1 does not fit
    finally:
        bs, accum = (trial.batch_size, trial.grad_accum) if trial is not None else (spec.batch_size, spec.grad_accum)
        if trial is not None:
            trial.close()  # frees the model, optimizer and the CUDA cache
    return {"trial": t, "rung": rung.index, "config": config, "steps": rung.budget_steps,
            "metric": metric, "metric_name": s.metric, "higher_is_better": s.higher_is_better,
            "eval": _small_eval(evals), "seconds": round(time.monotonic() - t0, 2), "status": status,
            "batch_size": bs, "grad_accum": accum, "checkpoint": ckpt,
            # Unix seconds: when trials overlapped (several at once on Ray), on which clock
            "started_at": round(started_at, 3), "finished_at": round(time.time(), 3)}


def _trial_for_rung(factory, spec, bundle, config: dict, s: SearchSettings, out: Path, prev: dict | None):
    """A fresh Trial for the first rung; the previous rung's checkpoint rebuilt for the others
    (with the micro-batch an out-of-memory back-off settled on)."""
    if prev is None:
        return factory.from_spec(spec, bundle, trial_hparams(config, s.warmup), lr_schedule="constant")
    trial = factory.load_checkpoint(out / prev["checkpoint"], bundle, device=spec.device)
    bs, accum = int(prev["batch_size"]), int(prev["grad_accum"])
    if (trial.batch_size, trial.grad_accum) != (bs, accum):
        trial.set_micro_batch(bs, accum)
    return trial


def _is_oom(err: BaseException) -> bool:
    import torch  # noqa: PLC0415  (only ever reached with a Trial built, so torch is loaded)

    return isinstance(err, torch.OutOfMemoryError)


def _small_eval(ev: dict) -> dict:
    """Scalar metrics only: per-class tables and confusion matrices belong to the final run."""
    return {k: v for k, v in (ev or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
