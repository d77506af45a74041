"""Experiment tracking: `--report-to tensorboard|mlflow|wandb|trackio|none`, as transformers'
`report_to` does, built as listeners on the progress bus (autotrain/progress.py).

    trackers = make_trackers(["tensorboard", "mlflow"], out_dir)   # or None: TensorBoard if installed
    for t in trackers:
        progress.subscribe(t)

Each search trial is one run (a trial continues across rungs, so its curve does too), the final
fine-tune is one more, all grouped under the output folder's name (TensorBoard: one folder per run
under `<out>/tensorboard/`; MLflow: child runs of one parent run; W&B and Trackio: `group`).
Logged: `train/loss` and `train/learning_rate` at every logged step, `eval/<metric>` and
`eval/loss` at each validation (a trial's at the end of each rung), and when the run is done the
test and baseline scalars of metrics.json as `test/<metric>` / `baseline/<metric>` and the final
configuration. Nothing needs an account or the network: TensorBoard and MLflow write under the
output folder (MLflow's local SQLite store `<out>/mlflow.db`, its file store being in maintenance
mode since MLflow 3), W&B runs offline (`wandb sync <out>/wandb/offline-run-*` uploads later), and
Trackio writes its local database (under `<out>/trackio/` when autoft is first to import it).

One small class per backend, registered in TRACKERS (peft style): `open`, `log`, `close`. The
shared event logic lives in `Tracker.__call__`. The progress bus swallows a listener's errors, so a
tracking failure never stops training.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from autoft.errors import AutoftError

TRACKERS: dict[str, type["Tracker"]] = {}
DEFAULT = "tensorboard"  # when --report-to is not given and it is installed
PROJECT = "autoft"


def register(cls: type["Tracker"]) -> type["Tracker"]:
    TRACKERS[cls.name] = cls
    return cls


def _scalars(d: dict | None, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in (d or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class Tracker:
    """A progress-bus listener that keeps one backend run per trial and one for the final run."""

    name = ""
    module = ""  # the import that must be available
    extra = ""   # pip install 'autoft[<extra>]'

    def __init__(self, out_dir: str | os.PathLike, project: str = PROJECT, group: str | None = None):
        self.out = Path(out_dir)
        self.project, self.group = project, group or self.out.resolve().name
        self.runs: dict[str, Any] = {}          # run key (trial-003, final) -> backend handle
        self.last_step: dict[str, int] = {}
        self.in_rung: dict[int, set[str]] = {}  # rung -> trial keys that trained in it

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec(cls.module) is not None

    # -- the backend: three calls ------------------------------------------------------------------
    def open(self, key: str, config: dict) -> Any:
        raise NotImplementedError

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, key: str, handle: Any, summary: dict[str, float], config: dict | None) -> None:
        """End a run; `summary` (final metrics, logged at the run's last step) and `config` (the
        final configuration) come only for the final run."""
        raise NotImplementedError

    # -- events -> runs ------------------------------------------------------------------------------
    def _run(self, key: str, config: dict | None = None) -> Any:
        if key not in self.runs:
            self.runs[key] = self.open(key, dict(config or {}))
        return self.runs[key]

    def _log(self, key: str, metrics: dict[str, float], step) -> None:
        if metrics and step is not None:
            self.log(self._run(key), metrics, int(step))
            self.last_step[key] = int(step)

    def _finish(self, key: str, summary: dict | None = None, config: dict | None = None) -> None:
        handle = self.runs.pop(key, None)
        if handle is not None:
            self.close(key, handle, dict(summary or {}), config)

    def __call__(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "trial_start":
            key = f"trial-{int(ev['trial']):03d}"
            self._run(key, {**(ev.get("config") or {}), "trial": ev["trial"]})
            self.in_rung.setdefault(int(ev.get("rung", 0)), set()).add(key)
        elif kind == "step":
            key = "final" if ev.get("phase") == "final" else f"trial-{int(ev.get('trial', 0)):03d}"
            metrics = {}
            if isinstance(ev.get("loss"), (int, float)):
                metrics["train/loss"] = float(ev["loss"])
            if isinstance(ev.get("lr"), (int, float)):
                metrics["train/learning_rate"] = float(ev["lr"])
            self._log(key, metrics, ev.get("step"))
        elif kind == "trial_end":
            key = f"trial-{int(ev['trial']):03d}"
            if key not in self.runs:         # finished before a resume: its record still counts
                self._run(key, {**(ev.get("config") or {}), "trial": ev["trial"]})
            metrics = _scalars(ev.get("eval"), "eval")
            if isinstance(ev.get("metric"), (int, float)) and ev.get("metric_name"):
                metrics[f"eval/{ev['metric_name']}"] = float(ev["metric"])
            self._log(key, metrics, ev.get("steps"))
            self.in_rung.setdefault(int(ev.get("rung", 0)), set()).add(key)
        elif kind == "rung_end":            # trials not promoted are over
            keep = {f"trial-{int(t):03d}" for t in ev.get("promoted") or []}
            for key in sorted(self.in_rung.get(int(ev.get("rung", 0)), set()) - keep):
                self._finish(key)
        elif kind == "phase" and ev.get("name") == "final":
            for key in [k for k in self.runs if k != "final"]:
                self._finish(key)
        elif kind == "eval":
            key = "final" if ev.get("phase", "final") == "final" else f"trial-{int(ev.get('trial', 0)):03d}"
            metrics = {}
            if isinstance(ev.get("metric"), (int, float)) and ev.get("metric_name"):
                metrics[f"eval/{ev['metric_name']}"] = float(ev["metric"])
            if isinstance(ev.get("loss"), (int, float)):
                metrics["eval/loss"] = float(ev["loss"])
            self._log(key, metrics, ev.get("step"))
        elif kind == "done":
            self._done(ev)

    def _done(self, ev: dict) -> None:
        """Final metrics from metrics.json (the pipeline writes it before `done`); close all runs."""
        summary, config = {}, None
        path = Path(ev.get("output_dir") or self.out) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text(encoding="utf-8"))
            summary = {**_scalars(m.get("test"), "test"), **_scalars(m.get("baseline"), "baseline")}
            config = m.get("config")
        if summary or config:
            self._run("final", config or {})
        for key in list(self.runs):
            self._finish(key, summary if key == "final" else None, config if key == "final" else None)


@register
class TensorBoardTracker(Tracker):
    """One event folder per run: <out>/tensorboard/trial-003, <out>/tensorboard/final."""

    name, module, extra = "tensorboard", "tensorboard", "tensorboard"

    def open(self, key: str, config: dict) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(log_dir=str(self.out / "tensorboard" / key))
        if config:
            w.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)
        return w

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            handle.add_scalar(k, v, step)

    def close(self, key: str, handle: Any, summary: dict[str, float], config: dict | None) -> None:
        step = self.last_step.get(key, 0)
        for k, v in summary.items():
            handle.add_scalar(k, v, step)
        if config:
            handle.add_text("final_config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", step)
        handle.close()


@register
class MLflowTracker(Tracker):
    """MLflow's local store under the output folder (sqlite:///<out>/mlflow.db, artifacts in
    <out>/mlruns); one parent run per autoft run, a child run per trial and one for the final run."""

    name, module, extra = "mlflow", "mlflow", "mlflow"

    def __init__(self, out_dir, project: str = PROJECT, group: str | None = None):
        super().__init__(out_dir, project, group)
        self.client = self.parent = self.experiment = None

    @property
    def tracking_uri(self) -> str:
        return "sqlite:///" + str((self.out / "mlflow.db").resolve())

    def _start(self) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network, ever
        from mlflow.tracking import MlflowClient

        self.out.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(self.project)
        self.experiment = exp.experiment_id if exp else self.client.create_experiment(
            self.project, artifact_location=(self.out / "mlruns").resolve().as_uri())
        self.parent = self.client.create_run(self.experiment, run_name=self.group).info.run_id

    def open(self, key: str, config: dict) -> Any:
        if self.client is None:
            self._start()
        run = self.client.create_run(self.experiment, run_name=key,
                                     tags={"mlflow.parentRunId": self.parent, "autoft.group": self.group})
        self._params(run.info.run_id, config)
        return run.info.run_id

    def _params(self, run_id: str, config: dict | None) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in (config or {}).items()]
        if params:
            self.client.log_batch(run_id, params=params)

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(handle, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, key: str, handle: Any, summary: dict[str, float], config: dict | None) -> None:
        if summary:
            self.log(handle, summary, self.last_step.get(key, 0))
        if config:
            self._params(handle, {f"final.{k}": v for k, v in config.items()})
        self.client.set_terminated(handle)

    def _done(self, ev: dict) -> None:
        super()._done(ev)
        if self.client is not None and self.parent:
            self.client.set_terminated(self.parent)


@register
class WandbTracker(Tracker):
    """Weights & Biases in offline mode: runs under <out>/wandb/, grouped by the output folder's
    name; `wandb sync` uploads them later if you want. No account, no network."""

    name, module, extra = "wandb", "wandb", "wandb"

    def open(self, key: str, config: dict) -> Any:
        import wandb

        self.out.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.project, group=self.group, name=f"{self.group}-{key}",
                          job_type="final" if key == "final" else "search-trial", config=config,
                          dir=str(self.out), mode="offline", reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        handle.log(metrics, step=step)

    def close(self, key: str, handle: Any, summary: dict[str, float], config: dict | None) -> None:
        if config:
            handle.config.update({f"final.{k}": v for k, v in config.items()}, allow_val_change=True)
        for k, v in summary.items():
            handle.summary[k] = v
        handle.finish()


@contextmanager
def _local_only(names: tuple[str, ...]):
    """Hide environment variables that would send a library's logs to a server, for one call."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@register
class TrackioTracker(Tracker):
    """Trackio's local SQLite database (a project `autoft`, runs named <group>-<key>, grouped).
    Its folder is fixed when trackio is imported: `<out>/trackio` when autoft imports it first
    (TRACKIO_DIR), else wherever the process's trackio already writes."""

    name, module, extra = "trackio", "trackio", "trackio"
    REMOTE_ENV = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_DATASET_ID", "TRACKIO_BUCKET_ID")

    def __init__(self, out_dir, project: str = PROJECT, group: str | None = None):
        super().__init__(out_dir, project, group)
        if "trackio" not in sys.modules:
            os.environ.setdefault("TRACKIO_DIR", str((self.out / "trackio").resolve()))

    def open(self, key: str, config: dict) -> Any:
        import trackio

        # trackio prints its progress on stdout, which `autoft run --json` keeps for the JSON
        with _local_only(self.REMOTE_ENV), redirect_stdout(sys.stderr):
            return trackio.init(project=self.project, name=f"{self.group}-{key}", group=self.group,
                                config=config, embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def log(self, handle: Any, metrics: dict[str, float], step: int) -> None:
        handle.log(metrics, step=step)

    def close(self, key: str, handle: Any, summary: dict[str, float], config: dict | None) -> None:
        if summary:
            handle.log(summary, step=self.last_step.get(key))
        with redirect_stdout(sys.stderr):
            handle.finish()


def check_names(names: list[str] | str) -> list[str]:
    """`--report-to` names, split at commas, lower-cased, de-duplicated and checked (unknown names
    and "none" with others are one-line errors). ["none"] stays ["none"]."""
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(n.lower() for part in names for n in part.replace(",", " ").split()))
    if "none" in names and len(names) > 1:
        raise AutoftError("--report-to none cannot be combined with other trackers", "pass none alone")
    unknown = [n for n in names if n not in TRACKERS and n != "none"]
    if unknown:
        raise AutoftError(f"unknown tracker {unknown[0]!r}", "use " + ", ".join([*TRACKERS, "none"]))
    return names


def make_trackers(names: list[str] | str | None, out_dir: str | os.PathLike) -> list[Tracker]:
    """Listeners for `--report-to` NAMES (a list; each may be comma-separated). None: TensorBoard
    when it is installed, else nothing; "none": nothing. A named backend that is not installed is
    an AutoftError with the pip command that installs it."""
    if names is None:
        return [TRACKERS[DEFAULT](out_dir)] if TRACKERS[DEFAULT].available() else []
    names = check_names(names)
    if names in (["none"], []):
        return []
    out = []
    for n in names:
        cls = TRACKERS[n]
        if not cls.available():
            raise AutoftError(f"--report-to {n}: {cls.module} is not installed",
                              f"pip install 'autoft[{cls.extra}]'")
        out.append(cls(out_dir))
    return out
