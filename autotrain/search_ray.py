"""The `ray` search backend: successive halving on Ray Tune, across GPUs and machines.

    result = run_search_ray(plan.trial, bundle, space, settings, out, progress,
                            parallel=Parallel("ray", address="10.0.0.5:6379", gpus_per_trial=0.5))

How autoft's search maps onto Ray Tune:
- every configuration is one Ray Tune trial: `param_space={"trial": grid_search(range(n))}` over
  autoft's own seeded configurations (`schedule.sample_configs`), the same as the local backend's;
- the trainable (`_trainable`) trains its trial rung by rung with `search.run_trial_rung`, the
  unit of work of every backend, and reports each rung's record with that rung's checkpoint
  (`tune.report(metrics, checkpoint=...)`); Ray keeps it in its storage, `out/ray/`. A promoted
  trial simply continues (in the same worker, from its checkpoint);
- promotions are Ray's own `ASHAScheduler` with autoft's rungs: grace period = the first rung's
  steps, reduction factor = eta, one bracket, and a max_t whose milestones are exactly the rung
  budgets (`scheduler_for`). It ranks by what the local backend promotes by (validation loss,
  or the metric); a failed trial-rung reports no value, as the local ranking leaves it out;
- the driver appends every trial-rung to trials.jsonl as Ray reports it (`_Callback`), then picks
  the winner from trials.jsonl exactly as the local backend does and copies its checkpoint from
  Ray's storage to `out/checkpoints/trial-NNN/rung-K`, where the final run continues it;
- faults: a trial whose worker dies is retried from its last checkpoint (`FailureConfig`), and
  the run says so. `--resume` after the driver was killed restores the experiment
  (`Tuner.restore`): a trial continues from the newer of Ray's checkpoint and the last one
  trials.jsonl recorded, so no recorded trial-rung trains again; the scheduler, whose state Ray
  does not save with the experiment, gets the recorded rung results back from trials.jsonl.
  Out of memory backs off in the trial itself (`Trial.train`), as on the local backend.

How it differs from the local backend: ASHA is asynchronous. A trial goes up a rung as soon as it
is in the best 1/eta of the trials that reached that rung *so far*, without waiting for the rung
to fill (no idle workers). The first trial to reach a rung always continues, so more trials may
reach a rung than the synchronous schedule keeps, and which ones depends on the order they
finish in. The best trial of every rung is always promoted, so when the best trial at each rung
is the best trial overall, both backends pick the same winner with the same score (same seed,
same configuration, same steps); `benchmarks/bench_ray_search.py` measures how often they agree
and what the extra rung places cost. After a driver crash, a trial that the scheduler stopped in
the last moment before the crash (before Ray saved its state) may be continued one rung more.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from autoft.autotrain import checkpoints
from autoft.autotrain.backends import Parallel, check_ray_address
from autoft.autotrain.progress import Progress, RunInterrupted
from autoft.autotrain.schedule import Rung
from autoft.autotrain.search import SearchResult, SearchSettings, _loss_of, _Search, run_trial_rung
from autoft.autotrain.store import OK_STATUSES, write_json
from autoft.errors import AutoftError

SCHEDULER = "ASHAScheduler (Ray Tune): asynchronous successive halving"
MAX_FAILURES = 2  # retries of a trial whose worker died, each from its last checkpoint
RECORD_FILE = "autoft-record.json"  # in each of Ray's checkpoints: its trial-rung's record
HEARTBEAT_S = 1.0  # how often the driver polls for Cancel while trials run elsewhere
# Ray Tune settings of the driver: a failed trial-rung reports no promotion value (Tune's strict
# metric check would refuse it); Ctrl-C interrupts the run as on the local backend (resumable)
# rather than Tune's own graceful stop, which would carry on as if the search had finished;
# autoft's progress is the display (Tune's tables would land on stdout, where --json goes), and
# a snapshot of the experiment after every trial-rung is what we want (`num_to_keep`), not a
# warning about it.
TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1",
            "RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}

# The live search of this process, by output folder. The callback, stopper and scheduler are
# pickled with the experiment (Ray's tuner.pkl) and unpickled by Tuner.restore in a new process:
# they carry only this key and find the search through it.
_LIVE: dict[str, "_RaySearch"] = {}


def run_search_ray(spec, bundle: Any, search_space: dict, settings: SearchSettings, out_dir, progress=None,
                   *, parallel: Parallel, trial_factory: Any = None, base_config: dict | None = None) -> SearchResult:
    """Run (or resume) the search on Ray: same arguments and result as `search.run_search`, plus
    where and how the trials run (`parallel`)."""
    return _RaySearch(spec, bundle, search_space, settings, Path(out_dir), progress or Progress(),
                      trial_factory, base_config, parallel).run()


# ---------------------------------------------------------------------------------------------
# the worker side: one Ray Tune trial = one configuration, rung by rung
# ---------------------------------------------------------------------------------------------

@dataclass
class _Job:
    """What every trial needs (shipped once through Ray's object store)."""

    spec: Any  # plan.TrialSpec
    bundle: Any
    configs: list[dict]
    rungs: list[Rung]
    settings: SearchSettings
    factory: Any  # None: trainer.Trial
    latest: dict[int, dict]  # trial -> its last record in trials.jsonl when this session started
    threads: int  # torch threads per trial (its CPU cores)
    gpu_share: float  # of one GPU: torch may use this fraction of its memory


def _trainable(config: dict, job: _Job) -> None:
    """Train trial `config["trial"]` rung by rung, reporting each rung's record and checkpoint;
    ASHA stops it between rungs (Tune then ends this function at its next report)."""
    t = int(config["trial"])
    spec = _worker_spec(job)
    factory = job.factory
    if factory is None:
        from autoft.autotrain.trainer import Trial as factory  # noqa: N813
    prev, source = _starting_point(t, job)
    if prev is not None and prev.get("status") not in OK_STATUSES:
        return  # its last trial-rung failed: the trial is over
    scratch = Path(tempfile.mkdtemp(prefix=f"autoft-trial-{t:03d}-"))
    try:
        for rung in job.rungs[(prev["rung"] + 1) if prev else 0:]:
            with source.as_directory() if source is not None else nullcontext(None) as d:
                start = dict(prev, checkpoint=str(d)) if prev else None  # out / absolute = absolute
                rec = run_trial_rung(factory, spec, job.bundle, job.configs[t], t, rung, job.settings, scratch,
                                     start, on_step=lambda info: None)
            rec["worker"] = f"{socket.gethostname()}:{os.getpid()}"
            metrics = {"steps": rung.budget_steps, "rung": rung.index, "record": json.dumps(rec)}
            if rec["status"] not in OK_STATUSES:
                tune.report(metrics)  # no promotion value: the scheduler leaves it out
                return
            path = scratch / rec["checkpoint"]
            (path / RECORD_FILE).write_text(json.dumps(rec), encoding="utf-8")
            metrics["promote"] = promotion_value(rec, job.settings)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(path)))
            if prev is not None and source is not None and Path(source.path).is_relative_to(scratch):
                shutil.rmtree(source.path, ignore_errors=True)  # Ray's storage has it; the next rung has its own
            prev, source = rec, tune.Checkpoint.from_directory(str(path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _worker_spec(job: _Job):
    """The trial spec on this worker: its GPU if Ray gave it one (else the CPU, in fp32), its
    share of the threads and of the GPU's memory."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(max(1, job.threads))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    if device == "cuda" and job.gpu_share < 1.0:
        torch.cuda.set_per_process_memory_fraction(job.gpu_share)  # an OOM here backs off, not the neighbour
    spec = job.spec
    if spec.device != device:
        spec = replace(spec, device=device, precision=spec.precision if device == "cuda" else "fp32")
    return spec


def _starting_point(t: int, job: _Job) -> tuple[dict | None, Any]:
    """(record of the last finished rung, its checkpoint): the newer of Ray's own checkpoint of
    this trial and the last record trials.jsonl has (Ray's saved state may be a rung behind when
    the driver was killed)."""
    ray_ckpt = tune.get_checkpoint()
    ray_rec = read_record(ray_ckpt) if ray_ckpt is not None else None
    stored = job.latest.get(t)
    if stored is not None and (ray_rec is None or stored["rung"] > ray_rec["rung"]):
        if stored.get("status") not in OK_STATUSES:
            return stored, None
        if stored.get("ray_checkpoint"):
            return stored, tune.Checkpoint(stored["ray_checkpoint"])
    return (ray_rec, ray_ckpt) if ray_rec is not None else (None, None)


def read_record(ckpt) -> dict | None:
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{RECORD_FILE}") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def promotion_value(rec: dict, s: SearchSettings) -> float:
    """What ASHA ranks a trial-rung by: what the local backend promotes by."""
    return _loss_of(rec) if s.promote_by == "loss" else float(rec["metric"])


def promotion_mode(s: SearchSettings) -> str:
    return "min" if s.promote_by == "loss" or not s.higher_is_better else "max"


# ---------------------------------------------------------------------------------------------
# the driver side: scheduler, callback, stopper (pickled with the experiment: they hold a key)
# ---------------------------------------------------------------------------------------------

class _Scheduler(ASHAScheduler):
    """Ray's ASHA with autoft's rungs. Ray does not save a scheduler's state with the experiment,
    so a restored search gives it back the recorded rung results from trials.jsonl."""

    def __init__(self, key: str, rungs: list[Rung], s: SearchSettings):
        # max_t a hair above the last budget: ASHA derives its milestones as
        # int(log(max_t / grace) / log(eta)) + 1 rungs, and log(3**5) / log(3) rounds to 4.999...
        super().__init__(time_attr="steps", metric="promote", mode=promotion_mode(s), brackets=1,
                         grace_period=rungs[0].budget_steps, max_t=rungs[-1].budget_steps * (1 + 1e-9),
                         reduction_factor=s.eta)
        self.key, self.seeded = key, False

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if not self.seeded:
            self.seeded = True
            live = _LIVE.get(self.key)
            if live is not None:
                self.seed(live.store.records, live.s)

    def seed(self, records: list[dict], s: SearchSettings) -> None:
        """Record the stored rung results, as if Ray had seen them in this session."""
        for milestone, recorded in self._brackets[0]._rungs:
            for r in records:
                if (r.get("status") in OK_STATUSES and r.get("ray_trial_id") and r.get("steps") == milestone):
                    recorded[r["ray_trial_id"]] = self._metric_op * promotion_value(r, s)


class _Callback(tune.Callback):
    """Tune's events, handed to the live search of this process."""

    def __init__(self, key: str):
        self.key = key

    def _live(self) -> "_RaySearch | None":
        return _LIVE.get(self.key)

    def on_trial_start(self, iteration, trials, trial, **info):
        if (live := self._live()) is not None:
            live.on_start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (live := self._live()) is not None:
            live.on_result(trial, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if (live := self._live()) is not None:
            live.on_checkpoint(trial, checkpoint)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if (live := self._live()) is not None:
            live.on_recover(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if (live := self._live()) is not None:
            live.on_error(trial)

    def on_step_end(self, iteration, trials, **info):
        if (live := self._live()) is not None:
            live.heartbeat(trials)


class _Stop(tune.Stopper):
    """Stops the whole experiment on Cancel / Ctrl-C from the TUI, or at the time budget."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        live = _LIVE.get(self.key)
        return bool(live is not None and live.should_stop())


def scheduler_for(key: str, rungs: list[Rung], s: SearchSettings) -> _Scheduler:
    return _Scheduler(key, rungs, s)


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------

class _RaySearch(_Search):
    backend, scheduler = "ray", SCHEDULER

    def __init__(self, spec, bundle, search_space, s, out: Path, progress: Progress, factory, base_config,
                 parallel: Parallel):
        super().__init__(spec, bundle, search_space, s, out, progress, factory, base_config)
        self.factory_arg = factory  # None: each worker imports trainer.Trial itself
        self.parallel, self.key = parallel, str(out.resolve())
        self.trials_at_once = 1
        self.pending: dict[str, dict] = {}  # Ray trial id -> its record, until its checkpoint is saved
        self.cancelled = self.timed_out = False
        self.last_beat = 0.0
        # wall time before a resume: trials overlapped, so their seconds do not add up
        done = [r for r in self.store.records if r.get("started_at") and r.get("finished_at")]
        if done:
            self.prior_seconds = max(r["finished_at"] for r in done) - min(r["started_at"] for r in done)

    # -- the run, top to bottom --------------------------------------------------------------------
    def run(self) -> SearchResult:
        finished = self._finished_before()
        if finished is not None:
            self.progress.emit("stage", name="search", detail="the Ray search finished before the resume")
            return self._result(finished)
        for k, v in TUNE_ENV.items():
            os.environ.setdefault(k, v)
        with ray_session(self.parallel) as cluster:
            resources = self.parallel.resources(cluster.get("GPU", 0.0))
            self.trials_at_once = trials_at_once(cluster, resources, len(self.configs), self.parallel.trials_at_once)
            self.announce(where=f", on Ray ({_describe(cluster)}): up to {self.trials_at_once} trials at once, "
                          f"{_describe(resources)} each, scheduler ASHA")
            _LIVE[self.key] = self
            try:
                self._tuner(resources).fit()
            finally:
                _LIVE.pop(self.key, None)
        if self.cancelled:
            raise RunInterrupted()
        if self.timed_out:
            self.progress.emit("warning", text=f"time budget of {self.s.time_budget_s:.0f} s reached: the Ray "
                               "search stopped its running trials")
        self._rung_events()
        self._fetch(self.winner())
        result = self._result(self.timed_out)
        drop_ray_checkpoints(self.out)
        self._mark_finished(result)
        return result

    def _tuner(self, resources: dict) -> tune.Tuner:
        trainable = tune.with_resources(tune.with_parameters(_trainable, job=self._job(resources)),
                                        {"cpu": resources["cpu"], "gpu": resources["gpu"]})
        path = str(self.out.resolve() / checkpoints.RAY_DIR)
        if tune.Tuner.can_restore(path):
            self.progress.emit("stage", name="search", detail=f"continuing the Ray search in {path} (Tuner.restore)")
            return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(list(range(len(self.configs))))},
            tune_config=tune.TuneConfig(scheduler=scheduler_for(self.key, self.rungs, self.s),
                                        # a worker process (torch imported, model cached) goes on
                                        # to the next trial
                                        max_concurrent_trials=self.trials_at_once, reuse_actors=True),
            run_config=tune.RunConfig(
                name=checkpoints.RAY_DIR, storage_path=str(self.out.resolve()), verbose=0,
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                # two per trial: the state Ray saved may name the one before the newest
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_Callback(self.key)], stop=_Stop(self.key)))

    def _job(self, resources: dict) -> _Job:
        spec = self.spec
        if Path(spec.model).exists():  # workers run in their own folders: no relative paths
            spec = replace(spec, model=str(Path(spec.model).resolve()))
        latest: dict[int, dict] = {}
        for r in self.store.records:
            if isinstance(r.get("trial"), int) and r["rung"] >= latest.get(r["trial"], {}).get("rung", -1):
                latest[r["trial"]] = r
        return _Job(spec=spec, bundle=self.bundle, configs=self.configs, rungs=self.rungs, settings=self.s,
                    factory=self.factory_arg, latest=latest, threads=max(1, int(resources["cpu"])),
                    gpu_share=min(1.0, resources["gpu"]) if resources["gpu"] > 0 else 1.0)

    # -- Tune's events (driver thread) ---------------------------------------------------------------
    def on_start(self, trial) -> None:
        t = int(trial.config["trial"])
        done = [r["rung"] for r in self.store.records if r.get("trial") == t]
        self.progress.emit("trial_start", rung=max(done) + 1 if done else 0, trial=t, index=t,
                           n_trials=len(self.configs), config=self.configs[t])

    def on_result(self, trial, result: dict) -> None:
        if "record" not in result:
            return
        rec = json.loads(result["record"])
        rec["ray_trial_id"] = trial.trial_id
        if rec.get("status") in OK_STATUSES:
            self.pending[trial.trial_id] = rec  # stored once Ray has saved its checkpoint
        else:
            self._store(rec)

    def on_checkpoint(self, trial, checkpoint) -> None:
        rec = self.pending.pop(trial.trial_id, None)
        if rec is not None:
            rec["ray_checkpoint"] = checkpoint_uri(checkpoint)
            self._store(rec)

    def _store(self, rec: dict) -> None:
        rec = self.store.append(rec)
        self.done_steps += next((r.new_steps for r in self.rungs if r.index == rec["rung"]), 0)
        if rec["status"] == "oom-retried":
            self.progress.emit("warning", text=f"trial {rec['trial']} ran out of memory: it went on with micro-batch "
                               f"{rec['batch_size']} x {rec['grad_accum']} accumulation")
        self.progress.emit("trial_end", **rec)

    def _last_checkpoint_text(self, t: int) -> str:
        ok = [r for r in self.store.records if r.get("trial") == t and r.get("status") in OK_STATUSES]
        if not ok:
            return "from the start (it had no checkpoint yet)"
        last = max(ok, key=lambda r: r["rung"])
        return f"from its last checkpoint (rung {last['rung'] + 1}, {last['steps']} steps)"

    def on_recover(self, trial) -> None:
        t = int(trial.config["trial"])
        self.progress.emit("warning", text=f"trial {t}: its Ray worker failed ({_error_line(trial)}); Ray retries it "
                           f"{self._last_checkpoint_text(t)}, retry {trial.num_failures} of {MAX_FAILURES}")

    def on_error(self, trial) -> None:
        t = int(trial.config["trial"])
        self.progress.emit("warning", text=f"trial {t} failed on Ray after {MAX_FAILURES} retries "
                           f"({_error_line(trial)}); the search goes on without it")

    def heartbeat(self, trials) -> None:
        """About once a second: lets Cancel (the TUI) and the time budget stop the experiment."""
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        running = sorted(int(t.config["trial"]) for t in trials if t.status == "RUNNING")
        try:
            self.progress.emit("heartbeat", phase="search", running=running, done_steps=self.done_steps)
        except RunInterrupted:
            self.cancelled = True

    def should_stop(self) -> bool:
        if self.s.time_budget_s is not None and self.elapsed() >= self.s.time_budget_s:
            self.timed_out = True
        return self.cancelled or self.timed_out

    # -- after the search ----------------------------------------------------------------------------
    def _rung_events(self) -> None:
        """rung_end for every rung (the TUI marks promotions with them): the trials that reached
        the next rung; for the last, the winner."""
        ok = [r for r in self.store.records if r.get("status") in OK_STATUSES]
        for rung in self.rungs:
            if rung.index == self.rungs[-1].index:
                promoted = [self.winner()["trial"]] if ok else []
            else:
                promoted = sorted({r["trial"] for r in ok if r["rung"] == rung.index + 1})
            self.progress.emit("rung_end", rung=rung.index, promoted=promoted)

    def _fetch(self, best: dict) -> None:
        """The winner's checkpoint, from Ray's storage to where the final run continues it."""
        dest = self.out / best["checkpoint"]
        if checkpoints.is_complete(dest) or not best.get("ray_checkpoint"):
            return
        shutil.rmtree(dest, ignore_errors=True)
        tune.Checkpoint(best["ray_checkpoint"]).to_directory(str(dest))
        (dest / RECORD_FILE).unlink(missing_ok=True)

    def _finished_before(self) -> bool | None:
        """On --resume: whether the Ray search had finished (then its stopped-by-time flag)."""
        try:
            d = json.loads((self.out / "search.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return bool(d.get("stopped_by_time")) if d.get("finished") and d.get("backend") == self.backend else None

    def _mark_finished(self, result: SearchResult) -> None:
        path = self.out / "search.json"
        d = json.loads(path.read_text(encoding="utf-8"))
        d.update(finished=True, stopped_by_time=result.stopped_by_time, best_trial=result.best_trial,
                 seconds=result.seconds)
        write_json(path, d)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@contextmanager
def ray_session(parallel: Parallel) -> Iterator[dict]:
    """Connected to Ray for the search: the cluster at `parallel.address`, or a Ray started on
    this machine (and stopped afterwards). Yields the cluster's resources (CPU, GPU, ...)."""
    if ray.is_initialized():  # the caller connected already (a notebook, a benchmark)
        yield ray.cluster_resources()
        return
    # Ray prints its own notices (a worker died, ...) on the driver's stdout: stdout is for
    # `--json`, so they go to stderr with the rest of the progress
    with contextlib.redirect_stdout(sys.stderr):
        yield from _connected(parallel)


def _connected(parallel: Parallel) -> Iterator[dict]:
    address = parallel.address
    try:
        if address:
            check_ray_address(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:  # "local": never join a cluster someone else started on this machine by accident
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except AutoftError:
        raise
    except Exception as err:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ValueError ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        where = f"the Ray cluster at {address}" if address else "Ray on this machine"
        raise AutoftError(f"could not connect to {where}: {first}",
                          "check --ray-address (what `ray start --head` printed), that the cluster runs "
                          f"Ray {ray.__version__} and autoft, and, if it uses token authentication, that "
                          "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) are set here") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


def trials_at_once(cluster: dict, resources: dict, n_trials: int, asked: int | None) -> int:
    """How many trials fit on the cluster at once (at most `asked`); a one-line error when not
    even one fits."""
    fits = [math.floor(cluster.get("CPU", 0.0) / resources["cpu"] + 1e-9)]
    if resources["gpu"] > 0:
        fits.append(math.floor(cluster.get("GPU", 0.0) / resources["gpu"] + 1e-9))
    n = min(fits)
    if n < 1:
        raise AutoftError(f"the Ray cluster ({_describe(cluster)}) cannot run a trial that asks for "
                          f"{_describe(resources)}", "lower --cpus-per-trial / --gpus-per-trial, or add machines")
    return max(1, min(n, n_trials, asked or n))


def checkpoint_uri(ckpt) -> str:
    """Where a Ray checkpoint lives, as a path or URI that `tune.Checkpoint(...)` reads back."""
    kind = getattr(ckpt.filesystem, "type_name", "local")
    return ckpt.path if kind == "local" else f"{kind}://{ckpt.path}"


def drop_ray_checkpoints(out: Path) -> None:
    """Ray's copies of the search checkpoints: the winner's is in checkpoints/ now."""
    for d in (out / checkpoints.RAY_DIR).glob("*/checkpoint_*"):
        shutil.rmtree(d, ignore_errors=True)


def _describe(res: dict) -> str:
    cpu = res.get("CPU", res.get("cpu", 0.0))
    gpu = res.get("GPU", res.get("gpu", 0.0))
    return f"{cpu:g} CPU" + (f", {gpu:g} GPU" if gpu else "")


def _error_line(trial) -> str:
    """The last line of a trial's error (Ray writes the traceback to error.txt)."""
    try:
        lines = [ln.strip() for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"
