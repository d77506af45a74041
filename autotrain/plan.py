"""The run's plan, typed: what one trial needs (`TrialSpec`) and what the whole run will do
(`RunPlan`), built once from the recommendation and the run's options and passed, unchanged, to
the search and the final run. Torch-free.

    plan = make_plan(Recommendation.from_dict(rec), opts, bundle, device="cpu", demo=False)
    get_backend(plan.parallel.backend).run(plan.parallel, plan.trial, bundle, ...)  # when plan.search
    FinalRun(plan, bundle, out, progress).run(config, start)
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

from autoft.advisor.recommend import Recommendation
from autoft.autotrain.backends import Parallel
from autoft.autotrain.options import DEFAULT_EPOCHS, DEFAULT_SEARCH_TRIALS, RunOptions
from autoft.autotrain.schedule import (DEFAULT_HPARAMS, MIN_DECAY_FRACTION, for_technique, parse_dim,
                                       parse_duration, search_step_cap, warmup_steps)
from autoft.autotrain.search import SearchSettings


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a run shares: the model and how it trains. The hyperparameters (the
    searched configuration) and the learning-rate schedule come per trial."""

    model: str  # Hub id, local folder or .gguf file
    task: str
    technique: str
    batch_size: int  # micro-batch
    grad_accum: int
    seq_len: int  # tokens
    precision: str  # fp32 on the CPU
    device: str
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    max_eval_examples: int | None = None  # cap on validation examples per evaluation
    seed: int = 0
    trust_remote_code: bool = False

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def with_micro_batch(self, batch_size: int, grad_accum: int) -> "TrialSpec":
        return replace(self, batch_size=batch_size, grad_accum=grad_accum)


@dataclass(frozen=True)
class RunPlan:
    """Everything the run will do, decided before any training."""

    trial: TrialSpec
    final_steps: int  # optimizer steps of the final run (the search's winner continues to it)
    train_examples: int
    metric: str  # what picks the winner and the best final checkpoint
    higher_is_better: bool
    search: SearchSettings | None  # None: no search
    search_space: dict
    base_config: dict  # hyperparameters without a search: the middle of the recommended ranges
    eval_every: int  # final run: validation every this many steps
    patience: int  # final run: evaluations without improvement before stopping
    merge: bool = False
    skip_reason: str | None = None  # why the search was skipped, when the user did not ask
    parallel: Parallel = Parallel()  # where the search's trials run (backends.py)

    def summary(self, output_dir: str) -> dict:
        """What the plan says to a person (the CLI's confirmation, the TUI)."""
        t = self.trial
        return {"model": t.model, "technique": t.technique, "task": t.task, "device": t.device,
                "precision": t.precision, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                "seq_len": t.seq_len, "final_steps": self.final_steps, "train_examples": self.train_examples,
                "search_trials": self.search.n_trials if self.search else 1,
                "min_steps": self.search.min_steps if self.search else None, "metric": self.metric,
                "search_backend": self.parallel.backend, "output_dir": output_dir}


def selection_metric(labels: list, task: str) -> tuple[str, bool]:
    """(metric, higher is better): eval loss for generation; for classification accuracy, or
    macro-F1 when the majority class holds 60% or more (accuracy rewards predicting it)."""
    if task == "generation":
        return "eval_loss", False
    if labels and Counter(labels).most_common(1)[0][1] / len(labels) >= 0.6:
        return "macro_f1", True
    return "accuracy", True


def default_learning_rate(search_space: dict) -> float:
    """The middle of the recommended learning-rate range (geometric), or its default."""
    lr = (search_space or {}).get("learning_rate") or (search_space or {}).get("lr")
    if isinstance(lr, dict) and lr.get("default") is not None:
        return float(lr["default"])
    d = parse_dim("learning_rate", lr) if lr is not None else None
    if d is not None and d.low and d.high:
        return float(f"{math.sqrt(d.low * d.high):.3g}")
    if isinstance(lr, (int, float)):
        return float(lr)
    return DEFAULT_HPARAMS["learning_rate"]


def recommended_config(rec: Recommendation) -> dict:
    """Hyperparameters without a search: the middle of the recommended ranges, the recommended
    LoRA rank and frozen layers; only the knobs the technique reads."""
    cfg = dict(DEFAULT_HPARAMS)
    cfg["learning_rate"] = default_learning_rate(rec.search_space)
    lora = rec.lora or {}
    cfg["lora_r"] = int(lora.get("r", cfg["lora_r"]))
    cfg["lora_alpha"] = int(lora.get("alpha", 2 * cfg["lora_r"]))
    cfg["lora_dropout"] = float(lora.get("dropout", cfg["lora_dropout"]))
    if rec.freeze_layers is not None:
        cfg["freeze_layers"] = rec.freeze_layers
    return for_technique(cfg, rec.technique)


def make_plan(rec: Recommendation, opts: RunOptions, bundle, *, task: str, device: str,
              demo: bool = False) -> RunPlan:
    """The run's plan from the recommendation and the (resolved) options."""
    trial = TrialSpec(model=rec.model_id, task=task, technique=rec.technique, batch_size=int(rec.batch_size),
                      grad_accum=int(rec.gradient_accumulation_steps), seq_len=int(rec.seq_len),
                      precision="fp32" if device == "cpu" else rec.precision, device=device,
                      optimizer=rec.optimizer, gradient_checkpointing=bool(rec.gradient_checkpointing),
                      max_eval_examples=opts.max_eval_examples, seed=opts.seed,
                      trust_remote_code=bool(opts.question.get("trust_remote_code")))
    n_train = len(bundle.splits["train"])
    steps_per_epoch = max(1, math.ceil(n_train / trial.effective_batch))
    final_steps = int(opts.max_steps or math.ceil((opts.epochs or DEFAULT_EPOCHS) * steps_per_epoch))
    metric, higher = selection_metric([r.get("label") for r in bundle.splits["train"]], task)
    n_trials = 1 if opts.no_search else (opts.search_trials or DEFAULT_SEARCH_TRIALS)
    min_steps = opts.min_steps or max(1, min(100, final_steps // opts.eta))
    step_cap = search_step_cap(final_steps)  # no rung so long that the final run has no room to decay
    search, skip = None, None
    if n_trials > 1 and step_cap >= min_steps:
        search = SearchSettings(n_trials=n_trials, eta=opts.eta, min_steps=min_steps, max_steps=step_cap,
                                time_budget_s=parse_duration(opts.time_budget), seed=opts.seed, metric=metric,
                                higher_is_better=higher,
                                warmup_steps=warmup_steps(DEFAULT_HPARAMS["warmup_ratio"], final_steps),
                                warn_short_rungs=not demo)  # the demo's short rungs are on purpose
    elif not opts.no_search:
        skip = (f"search skipped: its first rung ({min_steps} steps) does not fit in {step_cap} steps, "
                f"{1 - MIN_DECAY_FRACTION:.0%} of the {final_steps} final steps")
    return RunPlan(trial=trial, final_steps=final_steps, train_examples=n_train, metric=metric,
                   higher_is_better=higher, search=search, search_space=dict(rec.search_space),
                   base_config=recommended_config(rec),
                   eval_every=opts.eval_every or max(10, math.ceil(final_steps / 10)),
                   patience=opts.patience, merge=bool(opts.merge), skip_reason=skip, parallel=opts.parallel())
