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
from dataclasses import asdict, dataclass, replace

from autoft.advisor.recommend import Recommendation
from autoft.autotrain.imbalance import class_weights
from autoft.autotrain.backends import Parallel
from autoft.autotrain.options import DEFAULT_EPOCHS, DEFAULT_SEARCH_TRIALS, RunOptions
from autoft.autotrain.schedule import (DEFAULT_HPARAMS, MIN_DECAY_FRACTION, for_technique, parse_dim,
                                       search_step_cap, warmup_steps)
from autoft.autotrain.search import SearchSettings
from autoft.errors import AutoftError


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
    class_weights: tuple[float, ...] | None = None  # classification loss weights (autotrain/imbalance.py)
    packing: bool = False  # generation: whole examples packed into seq_len blocks (Trial._choose_packing)
    target_len: int | None = None  # summarization/translation on an encoder-decoder: target tokens

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def with_micro_batch(self, batch_size: int, grad_accum: int) -> "TrialSpec":
        return replace(self, batch_size=batch_size, grad_accum=grad_accum)


STRATEGY_TEXT = {"ddp": "a full replica per process, gradients all-reduced",
                 "fsdp": "weights, gradients and optimizer states sharded over the processes"}


@dataclass(frozen=True)
class DistPlan:
    """The final run as several data-parallel processes, started by torch.distributed.run.

    The plan's TrialSpec stays the one-process equivalent (accumulation = per-process
    accumulation x world): the search trains that in one process, and each of the `world`
    processes trains `per_process(trial)`: the same micro-batch, 1/world of the accumulation,
    its share of every micro-batch of the stream (autotrain/distributed.py)."""

    nproc_per_node: int
    strategy: str = "ddp"  # ddp | fsdp (the advisor's choice, or --strategy)
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of node 0 (several machines)
    reason: str = ""  # why this strategy

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes

    def per_process(self, trial: TrialSpec) -> TrialSpec:
        return trial.with_micro_batch(trial.batch_size, trial.grad_accum // self.world)


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
    dist: DistPlan | None = None  # several processes for the final run; None: this process
    parallel: Parallel = Parallel()  # where the search's trials run (backends.py)
    eval_examples: int | None = None  # final validation, test and baseline on the first N (a time budget's cap)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunPlan":
        """Read `to_dict()` back (the distributed final run's workers get the plan this way)."""
        d = dict(d)
        d["trial"] = TrialSpec(**d["trial"])
        d["search"] = SearchSettings(**d["search"]) if d.get("search") else None
        d["dist"] = DistPlan(**d["dist"]) if d.get("dist") else None
        d["parallel"] = Parallel(**d["parallel"]) if d.get("parallel") else Parallel()
        return cls(**d)

    def with_budget(self, bp, search_cap_s: float | None = None) -> "RunPlan":
        """This plan with the work a time budget chose (`budget.BudgetPlan`): configurations, first
        rung, final steps, validation interval, gradient accumulation and the examples evaluated;
        the search stops after `search_cap_s` seconds (the trial in flight abandoned) so that the
        final run keeps its time."""
        trial, cap = self.trial, bp.settings.eval_cap
        if cap is not None:  # validation during training no larger than the final passes
            trial = replace(trial, max_eval_examples=min(cap, trial.max_eval_examples or cap))
        trial = replace(trial, grad_accum=bp.grad_accum, batch_size=bp.batch_size)
        search = None
        if bp.rungs:
            search = SearchSettings(n_trials=bp.n_configs, eta=bp.eta, min_steps=bp.rungs[0].budget_steps,
                                    max_steps=search_step_cap(bp.final_steps), seed=self.trial.seed,
                                    metric=self.metric, higher_is_better=self.higher_is_better,
                                    warmup_steps=warmup_steps(DEFAULT_HPARAMS["warmup_ratio"], bp.final_steps),
                                    time_budget_s=search_cap_s,
                                    warn_short_rungs=False)  # the budget planner says so itself
        return replace(self, trial=trial, final_steps=bp.final_steps, search=search, eval_every=bp.eval_every,
                       skip_reason=None, eval_examples=cap)

    def summary(self, output_dir: str) -> dict:
        """What the plan says to a person (the CLI's confirmation, the TUI)."""
        t = self.trial
        return {"model": t.model, "technique": t.technique, "task": t.task, "device": t.device,
                "precision": t.precision, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                "seq_len": t.seq_len, "final_steps": self.final_steps, "train_examples": self.train_examples,
                "search_trials": self.search.n_trials if self.search else 1,
                "min_steps": self.search.min_steps if self.search else None, "metric": self.metric,
                "processes": self.dist.world if self.dist else 1,
                "strategy": self.dist.strategy if self.dist else None,
                "search_backend": self.parallel.backend, "output_dir": output_dir}


def selection_metric(labels: list, task: str) -> tuple[str, bool]:
    """(metric, higher is better): eval loss for the generative tasks (generation, summarization,
    translation); for classification accuracy, or macro-F1 when the majority class holds 60% or
    more (accuracy rewards predicting it)."""
    if task != "classification":
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


def dist_plan(rec: Recommendation, opts: RunOptions, device: str) -> DistPlan | None:
    """Several processes for the final run (--gpus N on GPUs, --processes N, --nnodes M), or None."""
    q = opts.question or {}
    per_node = int(q.get("processes") or (q.get("gpus") or 1 if device.startswith("cuda") else 1))
    nnodes = int(q.get("nnodes") or 1)
    if per_node * nnodes <= 1:
        return None
    strategy = q.get("strategy") or rec.strategy or "ddp"
    why = next((r["because"] for r in rec.reasons if r.get("rule", "").startswith("DIST-")
                or (r.get("rule") == "OVERRIDE" and "strategy" in r.get("because", ""))), "")
    if strategy == "fsdp" and opts.merge:
        raise AutoftError("--merge with FSDP: the adapter is sharded across the processes",
                          "drop --merge and merge afterwards (PeftModel.merge_and_unload), or use --strategy ddp")
    return DistPlan(nproc_per_node=per_node, strategy=strategy, nnodes=nnodes, node_rank=opts.node_rank,
                    rdzv_endpoint=opts.rdzv_endpoint,
                    reason=why or f"{strategy}: the recommendation names no strategy; {STRATEGY_TEXT[strategy]}")


def make_plan(rec: Recommendation, opts: RunOptions, bundle, *, task: str, device: str,
              demo: bool = False) -> RunPlan:
    """The run's plan from the recommendation and the (resolved) options."""
    dist = dist_plan(rec, opts, device)
    world = dist.world if dist else 1
    # the advisor's accumulation is per process for its world size (micro x accum x processes):
    # the one-process equivalent multiplies it back; a recommendation made for another number of
    # processes keeps its effective batch
    micro = int(rec.batch_size)
    planned = micro * int(rec.gradient_accumulation_steps) * max(1, int(rec.world_size or 1))
    micro = max(1, min(micro, planned // world))  # N processes at micro-batch b: at least N x b per step
    accum = max(1, round(planned / (micro * world))) * world
    trial = TrialSpec(model=rec.model_id, task=task, technique=rec.technique, batch_size=micro,
                      grad_accum=accum, seq_len=int(rec.seq_len),
                      precision="fp32" if device == "cpu" else rec.precision, device=device,
                      optimizer=rec.optimizer, gradient_checkpointing=bool(rec.gradient_checkpointing),
                      max_eval_examples=opts.max_eval_examples, seed=opts.seed,
                      trust_remote_code=bool(opts.question.get("trust_remote_code")),
                      packing=bool(opts.packing) and task == "generation",
                      target_len=int(rec.target_len) if rec.target_len else None)
    if task == "classification" and rec.class_weights == "balanced":   # the advisor's WEIGHT-* rules
        trial = replace(trial, class_weights=tuple(class_weights(bundle, "balanced")))
    n_train = len(bundle.splits["train"])
    steps_per_epoch = max(1, math.ceil(n_train / trial.effective_batch))
    final_steps = int(opts.max_steps or math.ceil((opts.epochs or DEFAULT_EPOCHS) * steps_per_epoch))
    metric, higher = (rec.metric, rec.metric_higher_is_better) if rec.metric else \
        selection_metric([r.get("label") for r in bundle.splits["train"]], task)  # (a recommendation saved before)
    n_trials = 1 if opts.no_search else (opts.search_trials or DEFAULT_SEARCH_TRIALS)
    min_steps = opts.min_steps or max(1, min(100, final_steps // opts.eta))
    step_cap = search_step_cap(final_steps)  # no rung so long that the final run has no room to decay
    search, skip = None, None
    if dist is not None and dist.strategy == "fsdp" and n_trials > 1:
        n_trials = 1  # the search trains in one process: a model that only fits sharded cannot
        skip = (f"search skipped: the model only fits sharded over {dist.world} processes (FSDP), and the "
                f"search trains its trials in one process; the recommended configuration trains once")
    if n_trials > 1 and step_cap >= min_steps:
        search = SearchSettings(n_trials=n_trials, eta=opts.eta, min_steps=min_steps, max_steps=step_cap,
                                seed=opts.seed, metric=metric,
                                higher_is_better=higher,
                                warmup_steps=warmup_steps(DEFAULT_HPARAMS["warmup_ratio"], final_steps),
                                warn_short_rungs=not demo)  # the demo's short rungs are on purpose
    elif not opts.no_search and skip is None:
        skip = (f"search skipped: its first rung ({min_steps} steps) does not fit in {step_cap} steps, "
                f"{1 - MIN_DECAY_FRACTION:.0%} of the {final_steps} final steps")
    return RunPlan(trial=trial, final_steps=final_steps, train_examples=n_train, metric=metric,
                   higher_is_better=higher, search=search, search_space=dict(rec.search_space),
                   base_config=recommended_config(rec),
                   eval_every=opts.eval_every or max(10, math.ceil(final_steps / 10)),
                   patience=opts.patience, merge=bool(opts.merge), skip_reason=skip, dist=dist,
                   parallel=opts.parallel())
