"""The final fine-tune: start (or resume), train with early stopping, finish.

    result = FinalRun(plan, bundle, out, progress).run(config, start=search_winner, resume=False)

The chosen configuration trains for the plan's `final_steps` with linear decay; it is validated
every `eval_every` steps, the best weights are kept, and it stops after `patience` evaluations
without improvement; then the test split is evaluated next to the baseline and the model saved.

With `start` (the search winner's checkpoint and its steps) the winner itself continues: its
learning rate stayed constant through the search and now decays linearly from that step to 0 at
`final_steps` (warmup-stable-decay, see schedule.search_step_cap). The search's steps count toward
the budget instead of being trained again.

Every new best is saved as a full checkpoint (weights, optimizer, scheduler, RNG, data position)
in `final-best/` with the run's bookkeeping (`final-state.json`). `--resume` continues from there:
continuation is exact, so a resumed run ends where an uninterrupted one would, and loses at most
the steps trained after the last best.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoft.advisor.spec import SEQ2SEQ_TASKS
from autoft.autotrain import checkpoints
from autoft.autotrain.evaluate import validation_loss
from autoft.autotrain.plan import RunPlan
from autoft.autotrain.progress import Progress
from autoft.autotrain.schedule import DEFAULT_HPARAMS, trial_hparams, warmup_steps
from autoft.autotrain.store import write_json

# Summarization/translation are scored on generated text (ROUGE, BLEU/chrF) for this many test
# examples unless --max-eval-examples says otherwise: greedy generation costs a forward pass per
# new token, so the whole test split would often take longer than the training.
GENERATION_TEST_EXAMPLES = 200
SAMPLE_PROMPTS = 3  # generation: the report's sample outputs, for the first test prompts


@dataclass(frozen=True)
class Start:
    """Where the final run starts when a search ran: its winner's checkpoint."""

    trial: int
    checkpoint: str  # relative to the output folder
    steps: int  # optimizer steps the winner has trained


@dataclass
class FinalState:
    """The final run's bookkeeping, saved with each best checkpoint (final-state.json)."""

    history: dict
    best: float | None = None
    best_step: int = 0
    samples: int = 0
    seconds: float = 0.0
    baseline: dict | None = None
    best_eval: dict | None = None  # the best validation pass, whole (reused when the final pass would repeat it)


@dataclass
class FinalResult:
    test: dict
    baseline: dict
    validation: dict
    seconds: float  # training wall time, resumed runs included
    steps: int  # optimizer steps trained in all
    best_step: int
    stopped_early: bool
    history: dict
    continued_from_step: int
    samples_per_second: float | None
    samples: list[dict] | None = field(default=None)  # generation: outputs for a few test prompts
    eval_seconds: float = 0.0  # the last evaluation: validation, test, samples
    save_seconds: float = 0.0  # saving the model


class FinalRun:
    """`keeper` (a `budget.Keeper`) holds the run to a time budget: it may shorten the final run
    before it starts and at each validation pass. `main`: this process writes the run's files (one
    process, or rank 0 of a distributed final run, where every process runs the same FinalRun and
    the trial gathers and writes its own)."""

    def __init__(self, plan: RunPlan, bundle: Any, out: Path, progress: Progress, trial_factory: Any = None,
                 keeper: Any = None, main: bool = True):
        if trial_factory is None:
            from autoft.autotrain.trainer import Trial as trial_factory  # noqa: N813  (torch, on first use)
        self.plan, self.bundle, self.out, self.progress, self.factory = plan, bundle, out, progress, trial_factory
        self.keeper = keeper
        self.best_dir = out / checkpoints.FINAL_DIR
        self.total = plan.final_steps  # optimizer steps to train to (a time budget may lower it)
        self.config: dict = {}
        self.main = main

    def run(self, config: dict, start: Start | None = None, resume: bool = False,
            baseline: dict | None = None) -> FinalResult:
        """`baseline`: the test baseline when already measured (the probe measures the generation
        baseline on the base model before any training)."""
        plan, self.config = self.plan, config
        if self.keeper is not None and not resume:
            self.total = self.keeper.final_steps()
        self.progress.emit("phase", name="final", total_steps=self.total)
        identity = {"config": config, "total_steps": self.total, "seed": plan.trial.seed,
                    "eval_every": plan.eval_every, "continued_from_step": start.steps if start else 0}
        trial, state = self._start_or_resume(config, start, identity, resume, baseline)
        finished = False
        try:
            if state.baseline is None:
                state.baseline = trial.baseline_eval("test", max_examples=self.plan.eval_examples)  # generation: the base model, before training
            stopped = self._train(trial, state, identity)
            result = self._finish(trial, state, stopped, identity["continued_from_step"])
            finished = True
        finally:
            trial.close()
            if finished and self.main:  # otherwise they stay for --resume
                shutil.rmtree(self.best_dir, ignore_errors=True)
                checkpoints.drop_search(self.out)  # the search winner's
        return result

    # -- start ----------------------------------------------------------------------------------
    def _start_or_resume(self, config: dict, start: Start | None, identity: dict, resume: bool,
                         baseline: dict | None):
        plan, lr, total = self.plan, config["learning_rate"], self.total
        state = self._saved_state(identity) if resume else None
        if state is not None:
            self.progress.emit("stage", name="final", detail=f"resuming at step {state.best_step} of "
                               f"{total} (the last best checkpoint), lr {lr:.3g}, linear decay")
            return self.factory.load_checkpoint(self.best_dir, self.bundle, device=plan.trial.device), state
        if self.main:
            shutil.rmtree(self.best_dir, ignore_errors=True)  # a stale one from another configuration
        state = FinalState(history={"train": [], "validation": [], "eval_every": plan.eval_every,
                                    "start_step": identity["continued_from_step"]}, baseline=baseline)
        if start is None:
            self.progress.emit("stage", name="final", detail=f"{total} steps, lr {lr:.3g}, linear decay")
            return self._fresh_trial(config), state
        if plan.trial.task != "classification" and state.baseline is None:
            # the baseline is the base model: measure it before loading the trained winner
            base = self._fresh_trial(config)
            try:
                state.baseline = base.baseline_eval("test", max_examples=self.plan.eval_examples)
            finally:
                base.close()
        self.progress.emit("stage", name="final", detail=f"trial {start.trial} continues from step {start.steps} "
                           f"to {total}, lr {lr:.3g} decaying linearly from step {start.steps}")
        trial = self.factory.load_checkpoint(self.out / start.checkpoint, self.bundle, device=plan.trial.device,
                                             lr_schedule="linear", total_steps=total,
                                             decay_start=start.steps, max_eval_examples=None)
        return trial, state

    def _fresh_trial(self, config: dict):
        total = self.total
        warmup = warmup_steps(config.get("warmup_ratio", DEFAULT_HPARAMS["warmup_ratio"]), total)
        # test and baseline always see the whole test split; only validation during training is capped
        return self.factory.from_spec(self.plan.trial, self.bundle, trial_hparams(config, warmup),
                                      lr_schedule="linear", total_steps=total, max_eval_examples=None)

    def _saved_state(self, identity: dict) -> FinalState | None:
        """The saved state of an interrupted final run of this configuration, or None."""
        try:
            saved = json.loads((self.best_dir / checkpoints.FINAL_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if any(saved.get(k) != v for k, v in identity.items()) or not checkpoints.is_complete(self.best_dir):
            return None
        return FinalState(**{k: saved[k] for k in FinalState.__dataclass_fields__ if k in saved})

    # -- train ----------------------------------------------------------------------------------
    def _train(self, trial, state: FinalState, identity: dict) -> bool:
        """Train to `self.total` steps with early stopping; True when it stopped early."""
        plan, progress, history = self.plan, self.progress, state.history
        t0, start_steps, train_s = time.monotonic() - state.seconds, trial.steps_done, 0.0
        bad = 0
        trial.on_backoff = lambda bs, acc: progress.emit(
            "warning", text=f"final run ran out of memory: micro-batch {bs} x {acc} accumulation")

        def on_step(info: dict) -> None:
            history["train"].append({"step": info.get("step"), "loss": info.get("loss"), "lr": info.get("lr")})
            progress.emit("step", phase="final", step=info.get("step"), total=self.total,
                          loss=info.get("loss"), lr=info.get("lr"), done_steps=info.get("step"))

        # Under a time budget the run is re-planned from its measured step time at least every
        # `hold` steps, not only at validation passes: a short final run validates only at its end
        # (a budget of 8 min: 11 steps of 30 s, validated once), and a machine slower than the
        # probe said would otherwise overrun the budget with nothing to stop it.
        hold = max(1, math.ceil(self.total / 8)) if self.keeper is not None and self.keeper.budgeted else None
        try:
            while trial.steps_done < self.total:
                # validate every eval_every steps counted from where the final run starts (0, or
                # the search winner's steps), whatever was trained since (the probe's steps, a resume)
                to_eval = plan.eval_every - (trial.steps_done - identity["continued_from_step"]) % plan.eval_every
                n = min(to_eval, self.total - trial.steps_done, hold or to_eval)
                res = trial.train(n, on_step=on_step)
                state.samples += int(res.get("samples") or 0)
                train_s += float(res.get("seconds") or 0.0)
                if n < to_eval and trial.steps_done < self.total:  # between validation passes
                    self._hold_to_budget(trial, self._step_s_ahead(trial, start_steps, train_s))
                    if trial.steps_done < self.total:
                        continue  # (shortened to here: validate now, as at the end)
                ev = trial.evaluate("validation", max_examples=plan.trial.max_eval_examples)
                val, val_loss = ev.get(plan.metric), validation_loss(ev)
                history["validation"].append({"step": trial.steps_done, plan.metric: val, "loss": val_loss})
                progress.emit("eval", phase="final", step=trial.steps_done, metric_name=plan.metric, metric=val,
                              loss=val_loss)
                self._hold_to_budget(trial, self._step_s_ahead(trial, start_steps, train_s))
                if val is not None and (state.best is None or (val > state.best if plan.higher_is_better
                                                               else val < state.best)):
                    state.best, state.best_step, bad = val, trial.steps_done, 0
                    state.best_eval = ev
                    if trial.steps_done < self.total:  # the last step's weights are in memory already
                        state.seconds = round(time.monotonic() - t0, 2)
                        self._save_best(trial, identity, state)
                    continue
                bad += 1
                if bad >= plan.patience:
                    progress.emit("message", text=f"early stop at step {trial.steps_done}: no better validation "
                                  f"{plan.metric} for {bad} evaluations (best at step {state.best_step})")
                    return True
            return False
        finally:
            state.seconds = round(time.monotonic() - t0, 2)

    def _step_s_ahead(self, trial, start_steps: int, train_s: float) -> float:
        """Seconds per step of the steps still to run, from those measured so far. The stream
        runs the longest examples first, so the first steps cost more than the rest: their mean
        alone cut a short run too much (alpaca, 8 min budget: the first 3 steps took 20 s each, the
        run was cut to 13 steps and ended 170 s early; its later steps took 13 s). The measured
        seconds per padded token are carried to the padded tokens of the steps ahead (as the probe
        predicts them), or the plain mean where the trial cannot say its padded tokens."""
        done = trial.steps_done - start_steps
        mean = train_s / max(1, done)
        padded = getattr(trial, "padded_tokens_per_micro_batch", None)
        ahead = self.total - trial.steps_done
        if padded is None or done < 1 or ahead < 1:
            return mean
        accum = trial.grad_accum

        def tokens(steps: int) -> float:  # padded tokens of the stream's first `steps` steps
            return padded(steps * accum) * steps * accum if steps else 0.0

        per_done = (tokens(trial.steps_done) - tokens(start_steps)) / done
        per_ahead = (tokens(self.total) - tokens(trial.steps_done)) / ahead
        return mean * per_ahead / per_done if per_done > 0 and per_ahead > 0 else mean

    def _hold_to_budget(self, trial, step_s: float) -> None:
        """A time budget re-plans at each validation pass and every `hold` steps (`step_s`: the
        steps ahead's predicted seconds each): a slower machine shortens the run (the learning rate
        then decays to 0 at the new end)."""
        if self.keeper is None or trial.steps_done >= self.total:
            return
        total = self.keeper.final_steps(trial.steps_done, step_s=step_s)
        if total < self.total:
            self.total = total
            trial.set_schedule(lr_schedule="linear", total_steps=total, decay_start=trial.decay_start)

    def _save_best(self, trial, identity: dict, state: FinalState) -> None:
        """Checkpoint at a new best. The state file is written last, after the checkpoint is
        complete, and removed first: a kill mid-save leaves no state, so --resume then starts the
        final run over instead of reading a half-written checkpoint."""
        if self.main:
            (self.best_dir / checkpoints.FINAL_STATE).unlink(missing_ok=True)
        trial.save_checkpoint(self.best_dir)
        if self.main:
            write_json(self.best_dir / checkpoints.FINAL_STATE, {**identity, **asdict(state)})

    # -- finish ---------------------------------------------------------------------------------
    def _finish(self, trial, state: FinalState, stopped: bool, from_step: int) -> FinalResult:
        """Back to the best weights, evaluate validation and test, generate samples, save."""
        steps_trained = trial.steps_done
        if state.best_step and state.best_step != trial.steps_done and self.best_dir.exists():
            trial.restore(self.best_dir)  # keep the best weights, not the last
        self.progress.emit("stage", name="evaluate", detail="test split")
        t_eval = time.monotonic()
        cap = self.plan.eval_examples  # a time budget's: the first N examples (None: the whole splits)
        if cap is not None and cap == self.plan.trial.max_eval_examples and state.best_eval is not None:
            validation = state.best_eval  # the best weights' pass on these very examples: not run twice
        else:
            validation = trial.evaluate("validation", max_examples=cap)
        test = trial.evaluate("test", max_examples=cap)
        samples = None
        if self.plan.trial.task in SEQ2SEQ_TASKS:
            samples = self._text_scores(trial, test, state)
        elif self.plan.trial.task == "generation":
            prompts = sample_prompts(self.bundle, SAMPLE_PROMPTS)
            if prompts:
                samples = [{"prompt": p, "output": o} for p, o in zip(prompts, trial.generate_samples(prompts))]
        t_save = time.monotonic()
        trial.save_model(self.out, merge=self.plan.merge)
        return FinalResult(test=test, baseline=state.baseline, validation=validation, seconds=state.seconds,
                           steps=steps_trained, best_step=state.best_step or steps_trained, stopped_early=stopped,
                           history=state.history, continued_from_step=from_step, samples=samples,
                           samples_per_second=round(state.samples / state.seconds, 2) if state.seconds > 0 else None,
                           eval_seconds=round(t_save - t_eval, 2), save_seconds=round(time.monotonic() - t_save, 2))

    def _text_scores(self, trial, test: dict, state: FinalState) -> list[dict]:
            """Summarization/translation: generate for the first test examples with the fine-tuned
            model and with the base model, score both (ROUGE-1/2/L; BLEU, chrF) into `test` and the
            baseline, and return the first samples with both outputs."""
            cap = min(self.plan.trial.max_eval_examples or GENERATION_TEST_EXAMPLES,
                      self.plan.eval_examples or GENERATION_TEST_EXAMPLES)
            n = min(cap, len(self.bundle.splits["test"]))
            self.progress.emit("stage", name="evaluate", detail=f"generating for {n} test examples (fine-tuned model)")
            tuned = trial.evaluate_generation("test", max_examples=cap)
            self.progress.emit("stage", name="evaluate", detail=f"generating for {n} test examples (base model)")
            base_trial = self._fresh_trial(self.config)  # the untrained base, same prompts and cap
            try:
                base = base_trial.evaluate_generation("test", max_examples=cap)
            finally:
                base_trial.close()
            samples = [{**s, "base_output": b["output"]} for s, b in zip(tuned.pop("samples"), base.pop("samples"))]
            test.update({k: v for k, v in tuned.items() if k not in ("examples",)}, generated_examples=tuned["examples"])
            state.baseline = {**(state.baseline or {}), **{k: v for k, v in base.items() if k != "examples"}}
            return samples


def sample_prompts(bundle, n: int) -> list[str]:
    """The user turns of the first `n` test examples (what generated samples answer)."""
    out = []
    for r in bundle.splits.get("test", [])[:n]:
        user = [m.get("content") for m in r.get("messages") or [] if m.get("role") == "user"]
        if user:
            out.append(user[-1])
        elif r.get("prompt"):
            out.append(r["prompt"])
    return out
