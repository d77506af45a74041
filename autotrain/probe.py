"""Measure before planning: a few real optimizer steps of the planned setting on the real model
and data, the evaluation time per example, and what building and checkpointing a trial cost.

    result = probe(plan.trial, bundle, hparams, warmup=1, steps=3)
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

from autoft.advisor.spec import SEQ2SEQ_TASKS
from autoft.errors import AutoftError


@dataclass
class ProbeResult:
    """Measured seconds of one setting (all wall-clock, on this machine, now)."""

    step_s: float  # seconds of a typical optimizer step: the timed steps' seconds per padded token x a typical step's
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
    eval_cap: int | None = None  # examples per final evaluation pass the budget allows (None: all)
    gen_s_per_example: float = 0.0  # summarization/translation: generating one test output, seconds
    s_per_padded_token: float = 0.0  # the timed steps' seconds per padded token (0: not known)
    padded_per_micro_batch: float = 0.0  # an epoch's mean padded tokens per micro-batch

    def step_s_over(self, trial, steps: int | None, accum: int, batch_size: int | None = None) -> float:
        """Seconds per step of `accum` micro-batches of `batch_size` over the run's first `steps`
        steps (their examples are the longest; None: an epoch's mean; `trial`: the probed Trial or
        one with the same data order)."""
        bs = batch_size or self.batch_size
        if not self.s_per_padded_token:
            return self.step_s * (accum * bs) / (self.grad_accum * self.batch_size)
        micro = None if steps is None else max(1, steps) * accum  # None: an epoch's mean
        return self.s_per_padded_token * trial.padded_tokens_per_micro_batch(micro, bs) * accum

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
                        trial_overhead_s=self.build_s + self.checkpoint_s, save_s=self.checkpoint_s,
                        gen_s_per_example=self.gen_s_per_example)

    def reuse(self, *, lr_schedule: str = "constant", total_steps: int | None = None,
              warmup_steps: int | None = None, decay_start: int | None = None):
        """Hand over the probed Trial with the learning-rate schedule the plan chose; it continues
        from step `steps_done`. The probe no longer owns it (close() will not touch it)."""
        trial = self.trial
        if trial is None:
            raise RuntimeError("the probed Trial was already reused or closed")
        trial.set_schedule(lr_schedule=lr_schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                           decay_start=decay_start)
        _set_rng(self.rng)  # other Trials built since re-seeded torch: continue the probe's stream
        self.trial = None
        return trial

    def close(self) -> None:
        if self.trial is not None:
            self.trial.close()
            self.trial = None


def probe(spec, bundle: Any, hparams: dict | None = None, *, warmup: int = 1, steps: int = 3,
          eval_examples: int = 32, baseline: bool = True, factory: Any = None,
          scratch: str | None = None, schedule: dict | None = None, sizing=None, check=None,
          check_steps: int = 10, sample_prompts: list[str] | None = None) -> ProbeResult:
    """Build the Trial of `spec` (a `plan.TrialSpec`) with `hparams` and `schedule` (from_spec's
    schedule arguments; default a constant learning rate, as the search trains), train `warmup`
    untimed and `steps` timed optimizer steps, time evaluation on up to `eval_examples` validation
    examples (generation with `baseline`: the base model's baseline on the test split, before
    training) and one checkpoint written under `scratch` (a temporary folder by default). Returns
    the times and the Trial, open, for reuse.

    A time budget hooks in twice, so that it is never spent on finding out it is too small:
    `sizing(eval_s_per_example, gen_s_per_example) -> cap | None`, asked after timing evaluation on a few examples
    and before the baseline, caps the baseline's test examples (budget.eval_cap); `check(step_s,
    eval_s_per_example, build_s, timed_steps) -> grad_accum | None`, asked after every timed step,
    raises to refuse the budget at once, or returns a smaller accumulation to time from the next
    step on (the times so far are dropped: they were steps of another size). The step time it is
    given is that of the first `check_steps` steps (the least run trains those: the dearest)."""
    if steps < 1 or warmup < 0:
        raise AutoftError(f"the probe needs at least 1 timed step, got {steps}", "pass steps=1 or more")
    if factory is None:
        from autoft.autotrain.trainer import Trial as factory  # noqa: N813
    t0 = time.perf_counter()
    # the schedule of the trial it becomes: constant for a search trial, the final run's decay without a search
    trial = factory.from_spec(spec, bundle, dict(hparams or {}), **(schedule or {"lr_schedule": "constant"}))
    try:
        trial._encode("validation")  # every trial tokenises it before its first evaluation
        build_s = time.perf_counter() - t0
        generative = baseline and trial.task != "classification"
        base, eval_s, n_eval, cap, gen_s = None, None, 0, None, 0.0
        if generative and trial.task in SEQ2SEQ_TASKS:  # scored by generating: time one batch of it
            t = time.perf_counter()
            n_gen = trial.evaluate_generation("test", max_examples=min(trial.batch_size, len(bundle.splits["test"])))["examples"]
            gen_s = (time.perf_counter() - t) / max(1, n_gen)
        elif generative and sample_prompts:  # generation: the report's samples, one at a time
            t = time.perf_counter()
            trial.generate_samples(sample_prompts[:1])
            gen_s = time.perf_counter() - t
        if sizing is not None:  # a few examples first: what the baseline and evaluation will cost
            split = "test" if generative else "validation"
            eval_s, n_eval = _time_eval(trial, split, min(8, len(bundle.splits[split])))
            cap = sizing(eval_s, gen_s)
        if generative:
            t = time.perf_counter()
            base = trial.baseline_eval("test", max_examples=cap or len(bundle.splits["test"]))  # the base model, before any step
            n_eval = int(base.get("examples") or 0)
            eval_s = (time.perf_counter() - t) / max(1, n_eval)
        if warmup:
            trial.train(warmup)
        times, padded, samples, tokens = [], [], 0, 0
        per_micro = trial.padded_tokens_per_micro_batch()  # an epoch's mean
        front = trial.padded_tokens_per_micro_batch(max(1, check_steps) * trial.grad_accum)  # the first steps' mean
        while len(times) < steps:
            res = trial.train(1)
            times.append(float(res["seconds"]))
            padded.append(int(res.get("padded_tokens") or 0))
            samples += int(res["samples"])
            tokens += int(res["tokens"])
            if check is not None:
                accum = check(_typical(times, padded, warmup, front * trial.grad_accum), eval_s or 0.0,
                              build_s, len(times))
                if accum and accum != trial.grad_accum:  # the budget cut the accumulation: time the new step
                    trial.set_batch(trial.batch_size, accum)
                    front = trial.padded_tokens_per_micro_batch(max(1, check_steps) * accum)
                    times, padded, samples, tokens = [], [], 0, 0
        rng = _get_rng(trial)
        if not generative:
            ev_s, n = _time_eval(trial, "validation", eval_examples)
            eval_s, n_eval = ev_s, n
        ckpt_s = _time_checkpoint(trial, scratch)
    except BaseException:
        trial.close()
        raise
    return ProbeResult(step_s=_typical(times, padded, warmup, per_micro * trial.grad_accum),
                       s_per_padded_token=_seconds_per_token(times, padded, warmup), padded_per_micro_batch=per_micro, step_times=times, warmup_steps=warmup, build_s=build_s,
                       eval_s_per_example=eval_s, eval_examples=n_eval, checkpoint_s=ckpt_s,
                       samples_per_s=samples / max(sum(times), 1e-9), tokens_per_example=tokens / max(1, samples),
                       batch_size=trial.batch_size, grad_accum=trial.grad_accum, device=str(trial.device),
                       baseline=base, steps_done=trial.steps_done, trial=trial, rng=rng, eval_cap=cap,
                       gen_s_per_example=gen_s)


def _seconds_per_token(times: list[float], padded: list[int], warmup: int) -> float:
    """The timed steps' seconds per padded token (0.0 when a step's tokens are unknown). Without a
    warm-up step the first timed step is left out when there are others (a fresh Trial's first
    step allocates and picks kernels)."""
    if warmup == 0 and len(times) > 1:
        times, padded = times[1:], padded[1:]
    return sum(times) / sum(padded) if padded and all(p > 0 for p in padded) else 0.0


def _typical(times: list[float], padded: list[int], warmup: int, step_tokens: float) -> float:
    """Seconds of the run's typical step: seconds per padded token times the padded tokens of a
    typical step (`step_tokens`; the first steps carry the longest examples, see
    Trial.padded_tokens_per_micro_batch); the median step when tokens are not known."""
    s_tok = _seconds_per_token(times, padded, warmup)
    return s_tok * step_tokens if s_tok and step_tokens > 0 else statistics.median(times)


def _time_eval(trial, split: str, n: int) -> tuple[float, int]:
    """Seconds per example evaluating the first `n` examples of `split`, and how many were seen."""
    t = time.perf_counter()
    ev = trial.evaluate(split, max_examples=n)
    n_eval = int(ev.get("examples") or min(n, len(trial._encode(split))))
    return (time.perf_counter() - t) / max(1, n_eval), n_eval


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
    the first `from_spec` with the probe's spec and configuration, with the schedule that call
    asks for, and builds every other Trial with `factory`. Attribute access (load_checkpoint, ...)
    goes to `factory`."""

    def __init__(self, factory: Any, result: ProbeResult, spec):
        self._factory, self._result, self._spec = factory, result, spec
        self._hparams = _comparable(result.trial.hparams) if result.trial is not None else None

    def from_spec(self, spec, bundle: Any, hparams: dict, **schedule):
        r = self._result
        if r.trial is not None and spec == self._spec and _comparable(hparams) == self._hparams:
            trial = r.reuse(lr_schedule=schedule.get("lr_schedule", "constant"),
                            total_steps=schedule.get("total_steps"), warmup_steps=hparams.get("warmup_steps"),
                            decay_start=schedule.get("decay_start"))
            if "max_eval_examples" in schedule:  # the final run evaluates test and baseline whole
                trial.max_eval_examples = schedule["max_eval_examples"]
                trial.args["max_eval_examples"] = schedule["max_eval_examples"]
            return trial
        return self._factory.from_spec(spec, bundle, hparams, **schedule)

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
    from autoft.advisor.recommend import Recommendation
    from autoft.autotrain.options import RunOptions
    from autoft.autotrain.plan import make_plan
    from autoft.autotrain.schedule import trial_hparams

    plan = make_plan(Recommendation.from_dict(rec), RunOptions(seed=seed, no_search=True), bundle,
                     task=rec["task"], device=device)  # what a run without a search trains
    r = probe(plan.trial, bundle, trial_hparams(plan.base_config, 0), warmup=warmup, steps=steps, baseline=False)
    r.close()
    n, eff = len(bundle.splits["train"]), plan.trial.effective_batch
    return {"examples_per_s": round(eff / r.step_s, 4), "step_s": round(r.step_s, 4),
            "epoch_s": round(math.ceil(n / eff) * r.step_s, 2), "tokens_per_example": round(r.tokens_per_example, 1),
            "tokens_assumed": f"measured on {r.steps_done} optimizer steps of your data ({r.tokens_per_example:.0f} "
            "tokens per example)", "utilisation": None, "bound": None, "device": device,
            "assumption": f"measured: median of {len(r.step_times)} timed steps after {r.warmup_steps} warm-up "
            f"step(s), {r.step_s:.3g} s each", "method": "probe", "probe": r.to_dict()}
