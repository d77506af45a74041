"""Measure before planning: a few real optimizer steps of the planned setting on the real model
and data, the evaluation time per example, and what building and checkpointing a trial cost.

    result = probe(trial_kwargs, hparams=config, warmup=1, steps=3)
    plan = plan_budget(budget_s, result.measured(), ...)       # autotrain/budget.py
    factory = ProbedFactory(Trial, result)                     # the search's first trial continues it

The probed steps are not thrown away: the probe builds the Trial exactly as the first search trial
(or the run without a search) would - same configuration, seed and data order - so that trial
can continue from the probe's last step (`ProbeResult.reuse`, or `ProbedFactory` handed to
`run_search` / the final run as its trial factory). Only the learning-rate schedule is not known
before the plan exists; `reuse` sets it, and the probe's first steps keep the warmup they ran with
(a difference of a few warmup steps).

For generation the probe also measures the base model on the test split before any training
(`ProbeResult.baseline`): the run needs that baseline anyway, and it times evaluation on real
examples. Everything else here is timing; no number is guessed.
"""
from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoft.errors import AutoftError


@dataclass
class ProbeResult:
    """Measured seconds of one setting (all wall-clock, on this machine, now)."""

    step_s: float  # median seconds per optimizer step after the warm-up steps
    step_times: list[float]  # every timed step, seconds
    warmup_steps: int  # steps trained but not timed (first-call allocations, kernel selection)
    build_s: float  # building the Trial: model load, technique, tokenising train and validation
    eval_s_per_example: float  # evaluation, seconds per example
    eval_examples: int  # examples the evaluation time was measured on
    checkpoint_s: float  # writing one checkpoint (a search trial-rung writes one)
    samples_per_s: float  # training examples per second in the timed steps
    tokens_per_example: float  # mean non-pad tokens per trained example
    batch_size: int
    grad_accum: int
    device: str
    baseline: dict | None = None  # generation: the base model's test metrics, measured before training
    steps_done: int = 0  # optimizer steps the probed Trial has trained
    trial: Any = field(default=None, repr=False)  # the probed Trial, until reused or closed
    rng: Any = field(default=None, repr=False)  # torch RNG states after the last step (dropout)

    def to_dict(self) -> dict:
        """For search.json / the report (the Trial itself is not serialised)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("trial", "baseline", "rng")}
        out["step_times"] = [round(x, 4) for x in self.step_times]
        for k in ("step_s", "build_s", "eval_s_per_example", "checkpoint_s", "samples_per_s", "tokens_per_example"):
            out[k] = round(float(out[k]), 5)
        return out

    def measured(self):
        """The measured times as the budget planner reads them (`budget.Measured`)."""
        from autoft.autotrain.budget import Measured

        return Measured(step_s=self.step_s, eval_s_per_example=self.eval_s_per_example,
                        trial_overhead_s=self.build_s + self.checkpoint_s, save_s=self.checkpoint_s)

    def reuse(self, *, lr_schedule: str = "constant", total_steps: int | None = None,
              warmup_steps: int | None = None, decay_start: int | None = None):
        """Hand over the probed Trial with the learning-rate schedule the plan chose; it continues
        from step `steps_done`. The probe no longer owns it (close() will not touch it)."""
        trial = self.trial
        if trial is None:
            raise RuntimeError("the probed Trial was already reused or closed")
        set_schedule(trial, lr_schedule=lr_schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                     decay_start=decay_start)
        _set_rng(self.rng)  # other Trials built since re-seeded torch: continue the probe's stream
        self.trial = None
        return trial

    def close(self) -> None:
        if self.trial is not None:
            self.trial.close()
            self.trial = None


def set_schedule(trial, *, lr_schedule: str, total_steps: int | None, warmup_steps: int | None,
                 decay_start: int | None = None) -> None:
    """Change a Trial's learning-rate schedule for the steps it has not trained yet (the scheduler
    reads these attributes at every step), and its saved arguments, so that a checkpoint rebuilds it
    with the same schedule."""
    from autoft.autotrain.trainer import LR_SCHEDULES

    if lr_schedule not in LR_SCHEDULES:
        raise AutoftError(f"unknown learning-rate schedule {lr_schedule!r}", "use constant, linear or cosine")
    if lr_schedule != "constant" and not total_steps:
        raise AutoftError(f"the {lr_schedule} schedule needs total_steps", "pass total_steps")
    if warmup_steps is not None:
        trial.warmup_steps = int(warmup_steps)
        trial.hparams["warmup_steps"] = int(warmup_steps)
    trial.lr_schedule, trial.total_steps = lr_schedule, total_steps
    trial.decay_start = max(trial.warmup_steps, int(decay_start or 0))
    trial.args.update(lr_schedule=lr_schedule, total_steps=total_steps, warmup_steps=trial.warmup_steps,
                      decay_start=decay_start, hparams=trial.hparams)


def probe(trial_kwargs: dict, hparams: dict | None = None, *, warmup: int = 1, steps: int = 3,
          eval_examples: int = 32, baseline: bool = True, seed: int = 0, factory: Any = None,
          scratch: str | None = None) -> ProbeResult:
    """Build the Trial of `trial_kwargs` with `hparams` (constant learning rate, as the search
    trains), train `warmup` untimed and `steps` timed optimizer steps, time evaluation on up to
    `eval_examples` validation examples (generation with `baseline`: on the whole test split, the
    base model's baseline, before training) and one checkpoint written under `scratch` (a temporary
    folder by default). Returns the times and the Trial, open, for reuse."""
    if steps < 1 or warmup < 0:
        raise AutoftError(f"the probe needs at least 1 timed step, got {steps}", "pass steps=1 or more")
    if factory is None:
        from autoft.autotrain.trainer import Trial as factory  # noqa: N813
    kw = dict(trial_kwargs)
    kw.update(hparams=dict(hparams or {}), lr_schedule="constant", seed=seed)
    kw.setdefault("warmup_steps", 0)
    t0 = time.perf_counter()
    trial = factory(**kw)
    try:
        trial._encode("validation")  # every trial tokenises it before its first evaluation
        build_s = time.perf_counter() - t0
        base, eval_s, n_eval = None, None, 0
        if baseline and trial.task == "generation":
            t = time.perf_counter()
            base = trial.baseline_eval("test")  # the base model, before any step
            n_eval = int(base.get("examples") or 0)
            eval_s = (time.perf_counter() - t) / max(1, n_eval)
        if warmup:
            trial.train(warmup)
        times, samples, tokens = [], 0, 0
        for _ in range(steps):
            res = trial.train(1)
            times.append(float(res["seconds"]))
            samples += int(res["samples"])
            tokens += int(res["tokens"])
        rng = _get_rng(trial)
        if eval_s is None:
            t = time.perf_counter()
            ev = trial.evaluate("validation", max_examples=eval_examples)
            n_eval = int(ev.get("examples") or min(eval_examples, len(trial._encode("validation"))))
            eval_s = (time.perf_counter() - t) / max(1, n_eval)
        ckpt_s = _time_checkpoint(trial, scratch)
    except BaseException:
        trial.close()
        raise
    return ProbeResult(step_s=statistics.median(times), step_times=times, warmup_steps=warmup, build_s=build_s,
                       eval_s_per_example=eval_s, eval_examples=n_eval, checkpoint_s=ckpt_s,
                       samples_per_s=samples / max(sum(times), 1e-9), tokens_per_example=tokens / max(1, samples),
                       batch_size=trial.batch_size, grad_accum=trial.grad_accum, device=str(trial.device),
                       baseline=base, steps_done=trial.steps_done, trial=trial, rng=rng)


def _get_rng(trial) -> dict:
    import torch

    cuda = trial.device.type == "cuda"
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None}


def _set_rng(state: dict | None) -> None:
    if not state:
        return
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _time_checkpoint(trial, scratch: str | None) -> float:
    folder = Path(tempfile.mkdtemp(prefix="autoft-probe-", dir=scratch))
    try:
        t = time.perf_counter()
        trial.save_checkpoint(folder / "ckpt")
        return time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ProbedFactory:
    """A trial factory (for `run_search` or the final run) that hands out the probed Trial for
    the first construction with the probe's configuration, with the schedule that construction
    asks for, and builds every other Trial with `factory`. Attribute access (load_checkpoint, ...)
    goes to `factory`."""

    def __init__(self, factory: Any, result: ProbeResult):
        self._factory, self._result = factory, result
        self._hparams = _comparable(result.trial.hparams) if result.trial is not None else None
        self._seed = result.trial.seed if result.trial is not None else None

    def __call__(self, *args, **kw):
        r = self._result
        if r.trial is not None and not args and self._matches(kw):
            return r.reuse(lr_schedule=kw.get("lr_schedule", "constant"), total_steps=kw.get("total_steps"),
                           warmup_steps=(kw.get("hparams") or {}).get("warmup_steps", kw.get("warmup_steps")),
                           decay_start=kw.get("decay_start"))
        return self._factory(*args, **kw)

    def _matches(self, kw: dict) -> bool:
        t = self._result.trial
        return (_comparable(kw.get("hparams") or {}) == self._hparams and kw.get("seed", 0) == self._seed
                and kw.get("technique") == t.technique and kw.get("batch_size") == t.batch_size
                and kw.get("grad_accum", 1) == t.grad_accum and kw.get("seq_len") == t.seq_len
                and str(kw.get("model_source")) == t.args["model_source"])

    def __getattr__(self, name: str):
        return getattr(self._factory, name)


def _comparable(hparams: dict) -> dict:
    """Hyperparameters that make two trials the same configuration (warmup is the schedule's)."""
    return {k: v for k, v in hparams.items() if k not in ("warmup_steps", "warmup_ratio")}


def measure_recommendation(rec: dict, bundle, *, device: str = "cpu", warmup: int = 1, steps: int = 3,
                           seed: int = 0) -> dict:
    """`autoft advise --measure`: time the recommended setting on this machine with the real model
    and data, and say it as a `Recommendation.speed` dict (method "probe"): examples per second,
    seconds per optimizer step and per epoch."""
    from autoft.autotrain.pipeline import fixed_config  # the configuration a run without a search trains

    model = rec["model"]["id"] if isinstance(rec.get("model"), dict) else str(rec.get("model"))
    precision = "fp32" if device == "cpu" else (rec.get("precision") or "bf16")
    batch, accum = int(rec.get("batch_size") or 8), int(rec.get("gradient_accumulation_steps") or 1)
    kw = dict(model_source=model, bundle=bundle, task=rec["task"], technique=rec["technique"], batch_size=batch,
              grad_accum=accum, seq_len=int(rec.get("seq_len") or 128), precision=precision,
              gradient_checkpointing=bool(rec.get("gradient_checkpointing")), device=device,
              optimizer="adamw" if device == "cpu" else (rec.get("optimizer") or "adamw"),
              trust_remote_code=bool(rec.get("trust_remote_code")))
    hp = {k: v for k, v in fixed_config(rec).items() if k != "warmup_ratio"}
    r = probe(kw, hp, warmup=warmup, steps=steps, baseline=False, seed=seed)
    r.close()
    n = len(bundle.splits["train"])
    eps = batch * accum / r.step_s
    return {"examples_per_s": round(eps, 4), "step_s": round(r.step_s, 4),
            "epoch_s": round(math.ceil(n / (batch * accum)) * r.step_s, 2), "tokens_per_example": round(r.tokens_per_example, 1),
            "tokens_assumed": f"measured on {r.steps_done} optimizer steps of your data ({r.tokens_per_example:.0f} "
            "tokens per example)", "utilisation": None, "bound": None, "device": device,
            "assumption": f"measured: median of {len(r.step_times)} timed steps after {r.warmup_steps} warm-up "
            f"step(s), {r.step_s:.3g} s each", "method": "probe", "probe": r.to_dict()}
