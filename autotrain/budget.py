"""A time budget that plans the whole run: pure functions, no torch.

    plan = plan_budget(budget_s, measured, BudgetSettings(final_steps_wanted=675, n_val=200, n_test=200))
    print(plan.text())       # search: 6 configurations, rungs of 100 and 300 steps, about 5 min; ...
    plan = replan(plan, measured_now, elapsed_s=..., rungs_done=1)   # after each rung, before the final run

The contract (FLAML's `time_budget`, AutoGluon's `time_limit`): the whole run - what was already
spent (the probe), the search, the final fine-tune, the last evaluation on validation and test, and
saving - is predicted to fit in `(1 - margin) x budget`. Times come from a measured probe
(`autotrain/probe.py`): seconds per optimizer step, per evaluated example, per trial built and per
checkpoint written.

How the work is chosen (a ladder, cheapest first; the plan is the highest rung of the ladder
that fits, so more budget never gives less work):
  1. the final run alone, from the least useful number of steps up to the steps wanted (3 epochs):
     without a search the advisor's configuration trains (a warning says the search was skipped);
  2. then a search of `eta` configurations (fewer if the user asked for fewer), its first rung
     growing from `min_rung` to `rung_target` steps: successive halving needs a first rung long
     enough to rank - about 100 optimizer steps, longer than the warmup (field notes section 3) -
     before it is worth more configurations;
  3. then more configurations at that first rung, up to the user's `--search-trials`.
Under the least rung the budget does not fit, `plan_budget` refuses at once with a one-line
AutoftError naming the least budget that works.

The final run continues the search's winner from its checkpoint (schedule.continued_cost_steps):
its cost is the search's steps plus F minus the winner's steps, and no rung trains past
schedule.search_step_cap(F), so the decay keeps a fifth of the run.

`replan` re-predicts what is left from the times measured so far (the machine may be slower than
the probe said) and, rather than overrun, promotes fewer trials, drops rungs or shortens the final
run - never below what was already trained.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from autoft.autotrain.schedule import Rung, search_step_cap, successive_halving
from autoft.errors import AutoftError


@dataclass(frozen=True)
class Measured:
    """Seconds measured on this machine (a probe, or the run so far)."""

    step_s: float  # one optimizer step of the planned setting
    eval_s_per_example: float  # evaluation, per example
    trial_overhead_s: float = 0.0  # per trial-rung: building (or restoring) a Trial + writing its checkpoint
    save_s: float = 0.0  # saving the final model (about one checkpoint)
    gen_s_per_example: float = 0.0  # summarization/translation: generating one test output (greedy, batched)

    def __post_init__(self) -> None:
        if not (self.step_s > 0 and self.eval_s_per_example >= 0 and self.trial_overhead_s >= 0 and self.save_s >= 0):
            raise AutoftError(f"measured times must be positive, got {self}", "re-run the probe")


@dataclass(frozen=True)
class BudgetSettings:
    """What the plan chooses within (upper bounds from the user's options and the data)."""

    final_steps_wanted: int  # the final run's optimizer steps without a budget (--epochs / --max-steps)
    n_val: int  # validation examples (the last evaluation sees all of them)
    n_test: int  # test examples
    max_configs: int = 9  # --search-trials: the most configurations the search may start
    eta: int = 3
    rung_target: int = 100  # first rung to reach before more configurations (--min-steps fixes it)
    min_rung: int = 20  # a shorter first rung ranks warmup noise: no search below it
    # the least training worth a run: 10 optimizer steps keep a warmup step and a decay; a budget
    # that cannot fit them (at the least effective batch) is refused
    min_final_steps: int = 10
    margin: float = 0.10  # plan to (1 - margin) x budget
    val_examples: int | None = None  # cap on validation examples per in-training evaluation
    max_final_evals: int = 10  # validation passes in the final run (one every F / 10 steps)
    eval_share: float = 0.15  # the final run's validation passes may cost this share of its training
    baseline_examples: int = 0  # generation: test examples of the base-model baseline still to evaluate
    grad_accum: int = 1  # the planned micro-batches per step: cut (never raised) when no useful run fits
    min_grad_accum: int = 1  # the least accumulation allowed (several processes: one micro-batch each)
    batch_size: int = 1  # the planned micro-batch: halved after the accumulation when still no useful run fits
    trained_steps: int = 0  # optimizer steps the probe trained that the first trial (or the final run) keeps
    eval_cap: int | None = None  # examples per final evaluation pass the budget allows (eval_cap(); None: all)
    gen_examples: int = 0  # test examples generated for: summarization/translation's scores, generation's samples
    gen_passes: int = 2  # models that generate for them: the tuned and the base (seq2seq scores); 1 for samples

    def __post_init__(self) -> None:
        if self.final_steps_wanted < 1 or self.eta < 2 or self.max_configs < 1:
            raise AutoftError("final steps, eta and configurations must be positive (eta at least 2)",
                              "check --max-steps, --eta and --search-trials")
        if not 0 <= self.margin < 1:
            raise AutoftError(f"the budget margin must be in [0, 1), got {self.margin}")


@dataclass
class BudgetPlan:
    """The work chosen for a budget and its predicted seconds per phase."""

    budget_s: float
    n_configs: int  # configurations the search starts with (1: no search)
    eta: int
    rungs: list[Rung]  # the search's rungs (empty: no search)
    final_steps: int  # F, counting the winner's search steps it continues from
    eval_every: int  # the final run validates every this many steps
    val_examples: int  # validation examples per in-training evaluation
    phases: dict[str, float]  # predicted seconds: spent, search, final, evaluation, save
    measured: Measured
    settings: BudgetSettings
    elapsed_s: float = 0.0  # already spent when planned (probe, data loading), counted in the budget
    warnings: list[str] = field(default_factory=list)
    actual: dict[str, float] = field(default_factory=dict)  # measured seconds per phase, filled by the run
    replans: int = 0
    grad_accum: int = 0  # micro-batches per step the plan trains with (0: settings.grad_accum)
    batch_size: int = 0  # the micro-batch the plan trains with (0: settings.batch_size)
    # the phases as first planned (what the user was told before training); a re-plan changes
    # `phases` (its "spent" then holds everything run so far) but never this
    planned: dict[str, float] = field(default_factory=dict)
    planned_text: str = ""  # text() as first planned (a re-plan's text() describes what is left)

    def __post_init__(self) -> None:
        self.grad_accum = self.grad_accum or self.settings.grad_accum
        self.batch_size = self.batch_size or self.settings.batch_size
        if not self.planned:
            self.planned = dict(self.phases)
            self.planned_text = self.text()
            # what was spent before the plan (the probe, loading) is measured, not predicted
            self.actual.setdefault("spent", round(float(self.phases.get("spent", 0.0)), 2))

    @property
    def search(self) -> bool:
        return bool(self.rungs)

    @property
    def total_s(self) -> float:
        return sum(self.phases.values())

    @property
    def winner_steps(self) -> int:
        """Steps the final run starts from (the last rung's budget; 0 without a search)."""
        return self.rungs[-1].budget_steps if self.rungs else 0

    @property
    def search_steps(self) -> int:
        return sum(r.cost_steps for r in self.rungs)

    def record(self, phase: str, seconds: float) -> None:
        """The run says how long a phase actually took (for the report: predicted vs actual)."""
        self.actual[phase] = round(float(seconds), 2)

    def text(self) -> str:
        """One line for the terminal, before training."""
        parts = []
        if self.rungs:
            steps = [str(r.budget_steps) for r in self.rungs]
            rung_s = steps[0] if len(steps) == 1 else ", ".join(steps[:-1]) + " and " + steps[-1]
            parts.append(f"search: {self.n_configs} configurations, rung{'s' if len(steps) > 1 else ''} of "
                         f"{rung_s} steps, about {fmt_duration(self.phases['search'])}")
        else:
            parts.append("search: none")
        cont = f" (continuing the winner from step {self.winner_steps})" if self.rungs else ""
        parts.append(f"final run: {self.final_steps} steps{cont}, about {fmt_duration(self.phases['final'])}")
        parts.append(f"evaluation: about {fmt_duration(self.phases['evaluation'])}")
        parts.append(f"saving: about {fmt_duration(self.phases['save'])}")
        if math.isinf(self.budget_s):
            return "; ".join(parts) + f" (about {fmt_duration(self.total_s)} in all)"
        return "; ".join(parts) + f" (about {fmt_duration(self.total_s)} of the {fmt_duration(self.budget_s)} budget)"

    def to_dict(self) -> dict:
        """For search.json and the report: the choices, predicted vs actual seconds per phase."""
        return {"budget_s": None if math.isinf(self.budget_s) else self.budget_s, "margin": self.settings.margin, "n_configs": self.n_configs,
                "eta": self.eta, "rungs": [asdict(r) for r in self.rungs], "final_steps": self.final_steps,
                "continued_from_step": self.winner_steps, "eval_every": self.eval_every,
                "val_examples": self.val_examples, "eval_examples": self.settings.eval_cap,
                "grad_accum": self.grad_accum, "batch_size": self.batch_size, "elapsed_s": round(self.elapsed_s, 2),
                # predicted: as first planned; replanned (after a re-plan): the latest plan, whose
                # "spent" is everything run by then; actual: as the run measured each phase
                "phases": {k: {"predicted_s": round(v, 1), "actual_s": self.actual.get(k),
                               **({"replanned_s": round(self.phases.get(k, 0.0), 1)} if self.replans else {})}
                           for k, v in self.planned.items()},
                "predicted_total_s": round(sum(self.planned.values()), 1),
                "replanned_total_s": round(self.total_s, 1) if self.replans else None,
                "actual_total_s": round(sum(self.actual.values()), 1) if self.actual else None,
                "measured": asdict(self.measured), "settings": asdict(self.settings),
                "warnings": list(self.warnings), "replans": self.replans,
                # text: what the user was told before training; replanned_text: the latest plan's
                "text": self.planned_text or self.text(),
                "replanned_text": self.text() if self.replans else None}


def fmt_duration(seconds: float) -> str:
    """40 -> '40 s', 330 -> '5.5 min', 7200 -> '2.0 h'."""
    if seconds < 90:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# Cost of one candidate
# ---------------------------------------------------------------------------------------------
def search_rungs(n_configs: int, eta: int, first_rung: int, final_steps: int) -> list[Rung]:
    """The search's rungs as run_search runs them: successive halving capped at
    search_step_cap(F), a trailing rung of a single trial dropped (the final run continues it)."""
    if n_configs < 2:
        return []
    rungs = successive_halving(n_configs, eta, first_rung, max(first_rung, search_step_cap(final_steps)))
    if len(rungs) > 1 and rungs[-1].n_trials == 1:
        rungs = rungs[:-1]
    if rungs and rungs[-1].budget_steps > search_step_cap(final_steps):
        return []
    return rungs


def final_evals(final_steps: int, m: Measured, val_n: int, s: BudgetSettings) -> int:
    """Validation passes in the final run: up to max_final_evals (one every >= 10 steps), fewer
    when one pass costs more than eval_share of the training between two passes; at least one."""
    by_steps = max(1, final_steps // 10)
    one = val_n * m.eval_s_per_example
    if one <= 0:
        return min(s.max_final_evals, by_steps)
    by_time = math.floor(s.eval_share * final_steps * m.step_s / one)
    return max(1, min(s.max_final_evals, by_steps, by_time))


def _phases(rungs: list[Rung], final_steps: int, m: Measured, s: BudgetSettings, val_n: int,
            elapsed_s: float, final_done: int = 0) -> tuple[dict[str, float], int]:
    """Predicted seconds per phase and the final run's evaluation interval. `final_done`: steps
    the final run has already trained (re-planning during it): only the rest is counted."""
    one_eval = val_n * m.eval_s_per_example
    search = sum(r.n_trials * (r.new_steps * m.step_s + m.trial_overhead_s + one_eval) for r in rungs)
    if rungs and s.trained_steps:  # the first trial continues the probe's Trial and its steps
        search -= min(s.trained_steps, rungs[0].new_steps) * m.step_s + m.trial_overhead_s
    elif not rungs:  # the final run continues the probe's Trial: no build, its steps are trained
        final_done = max(final_done, min(s.trained_steps, final_steps))
    start = max(rungs[-1].budget_steps if rungs else 0, final_done)
    evals = final_evals(final_steps, m, val_n, s)
    left = max(0.0, (final_steps - start) / max(1, final_steps))  # share of the passes still to come
    # the final run: its own steps, its validation passes, building it (unless running already)
    # and a checkpoint at about half of the passes (each new best is saved)
    final = ((final_steps - start) * m.step_s + left * evals * one_eval + (0.0 if final_done else m.trial_overhead_s)
             + left * math.ceil(evals / 2) * m.save_s)
    # a capped final validation repeats the best in-training pass on the same examples: reused, not run
    final_val = 0 if s.eval_cap is not None and val_n >= s.n_val else s.n_val
    evaluation = ((final_val + s.n_test + s.baseline_examples) * m.eval_s_per_example
                  + s.gen_passes * s.gen_examples * m.gen_s_per_example)
    phases = {"spent": elapsed_s, "search": max(0.0, search), "final": final, "evaluation": evaluation,
              "save": m.save_s}
    return phases, max(1, math.ceil(final_steps / evals))


def _val_n(s: BudgetSettings) -> int:
    return max(1, min(s.n_val, s.val_examples or s.n_val))


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
def ladder(s: BudgetSettings) -> list[tuple[int, int, int]]:
    """Candidate (n_configs, first_rung, final_steps), cheapest first (see the module doc)."""
    F = s.final_steps_wanted
    f_min = min(s.min_final_steps, F)
    out = [(1, 0, f) for f in range(f_min, F + 1)]
    n0 = min(s.eta, s.max_configs)
    if n0 >= 2:
        top = min(s.rung_target, search_step_cap(F))
        out += [(n0, r, F) for r in range(s.min_rung, top + 1)]
        if top == s.rung_target:
            out += [(n, top, F) for n in range(n0 + 1, s.max_configs + 1)]
    return out


def plan_budget(budget_s: float, measured: Measured, settings: BudgetSettings, elapsed_s: float = 0.0) -> BudgetPlan:
    """The most work (highest ladder candidate) predicted to fit (1 - margin) x budget_s, time
    already spent included. When not even the least useful final run fits, the effective batch is
    cut (`batch_ladder`: accumulation halved down to `min_grad_accum`, then the micro-batch halved;
    a step costs its share of the measured one)
    before giving up: a smaller effective batch beats no run. Raises AutoftError naming the least
    budget that works when nothing fits. budget_s = math.inf: the whole run as configured, with its
    predicted duration (a run without --time-budget)."""
    s = settings
    if budget_s is None or budget_s <= 0:
        raise AutoftError(f"the time budget must be positive, got {budget_s}", "pass --time-budget 30m")
    for bs, accum in batch_ladder(s):
        m = _at_batch(measured, s, bs, accum)
        best = _most_work(budget_s, m, s, elapsed_s)
        if best is not None:
            break
    else:
        raise _too_small(budget_s, measured, s, _val_n(s), elapsed_s)
    n, rungs, F, phases, every = best
    plan = BudgetPlan(budget_s=budget_s, n_configs=n if rungs else 1, eta=s.eta, rungs=rungs, final_steps=F,
                      eval_every=every, val_examples=_val_n(s), phases=phases, measured=m, settings=s,
                      elapsed_s=elapsed_s, grad_accum=accum, batch_size=bs)
    plan.warnings = _warnings(plan, measured)
    return plan


def _most_work(budget_s: float, m: Measured, s: BudgetSettings, elapsed_s: float):
    avail = (1 - s.margin) * budget_s
    val_n = _val_n(s)
    best = None
    for n, r, F in ladder(s):
        rungs = search_rungs(n, s.eta, r, F) if n > 1 else []
        if n > 1 and not rungs:
            continue
        phases, every = _phases(rungs, F, m, s, val_n, elapsed_s)
        if sum(phases.values()) <= avail:
            best = (n, rungs, F, phases, every)
    return best


def accumulation_ladder(accum: int, floor: int = 1) -> list[int]:
    """Gradient accumulations to try, planned first: 8 -> [8, 4, 2, 1]; 6 -> [6, 3, 1]."""
    out, a = [accum], accum
    while a > max(1, floor):
        a = max(floor, a // 2, 1)
        out.append(a)
    return out


def batch_ladder(s: BudgetSettings) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) to try, the planned one first: the accumulation halved to its
    floor, then the micro-batch halved to 1. 4 x 4 -> (4, 4), (4, 2), (4, 1), (2, 1), (1, 1)."""
    out = [(s.batch_size, a) for a in accumulation_ladder(s.grad_accum, s.min_grad_accum)]
    bs, accum = out[-1]
    while bs > 1:
        bs //= 2
        out.append((bs, accum))
    return out


def _at_batch(m: Measured, s: BudgetSettings, batch_size: int, accum: int) -> Measured:
    """A step of `accum` micro-batches of `batch_size`: the measured step (of the planned batch)
    scaled by the examples (a smaller micro-batch pads less: the scaling errs long)."""
    share = (batch_size * accum) / (s.batch_size * s.grad_accum)
    return m if share == 1 else replace(m, step_s=m.step_s * share)


EVAL_SHARE = 0.25  # the final evaluations (validation, test, the base model's baseline) may cost this share
MIN_EVAL_EXAMPLES = 16  # ...but never fewer examples per pass than this (or the whole split)


def eval_cap(budget_s: float | None, eval_s_per_example: float, n_val: int, n_test: int, baseline: bool = False,
             share: float = EVAL_SHARE, floor: int = MIN_EVAL_EXAMPLES, gen_s_per_example: float = 0.0,
             gen_examples: int = 0, gen_passes: int = 2) -> int | None:
    """Examples per final evaluation pass (validation, test and, with `baseline`, the base model on
    test; summarization/translation also generate for up to `gen_examples` of them, with
    `gen_passes` models: the tuned and the base, as BudgetSettings.gen_passes) that keep the final evaluation within `share` of the budget: None
    when the whole splits fit (or without a budget), else the first N examples of each split, at
    least `floor`. A larger budget never evaluates on fewer examples."""
    if not budget_s or math.isinf(budget_s) or eval_s_per_example <= 0:
        return None
    passes = 2 + int(baseline)

    def cost(c: int) -> float:
        n_v, n_t = min(n_val, c), min(n_test, c)
        return ((n_v + n_t * (passes - 1)) * eval_s_per_example
                + gen_passes * min(n_t, gen_examples) * gen_s_per_example)

    top = max(n_val, n_test)
    if cost(top) <= share * budget_s:
        return None
    lo, hi = min(floor, top), top  # the largest cap whose cost fits (cost grows with the cap)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= share * budget_s else (lo, mid - 1)
    return lo


def least_budget(measured: Measured, settings: BudgetSettings, elapsed_s: float = 0.0) -> float:
    """The smallest budget (seconds, rounded up to a readable figure) that plan_budget accepts."""
    s = settings
    m = _at_batch(measured, s, *batch_ladder(s)[-1])
    phases, _ = _phases([], min(s.min_final_steps, s.final_steps_wanted), m, s, _val_n(s), elapsed_s)
    return _round_up(sum(phases.values()) / (1 - s.margin))


def _too_small(budget_s: float, m: Measured, s: BudgetSettings, val_n: int, elapsed_s: float) -> AutoftError:
    f_min = min(s.min_final_steps, s.final_steps_wanted)
    need = least_budget(m, s, elapsed_s)
    bs, least = batch_ladder(s)[-1]
    each = (f"{m.step_s:.2g} s each, measured" if (bs, least) == (s.batch_size, s.grad_accum) else
            f"{_at_batch(m, s, bs, least).step_s:.2g} s each at the least batch, {bs} x {least}; "
            f"{m.step_s:.2g} s at {s.batch_size} x {s.grad_accum}, measured")
    return AutoftError(
        f"a time budget of {fmt_duration(budget_s)} is too small: {f_min} optimizer steps "
        f"({each}), evaluation and saving need a budget of about {fmt_duration(need)} "
        f"(with a {s.margin:.0%} margin)",
        f"pass --time-budget {fmt_budget(need)} or more, or a smaller model or shorter --seq-len")


def _round_up(seconds: float) -> float:
    step = 10 if seconds < 120 else 30 if seconds < 1800 else 300
    return float(math.ceil(seconds / step) * step)


def fmt_budget(seconds: float) -> str:
    """A --time-budget value: 90 -> '90s', 600 -> '10m', 630 -> '10m30s', 5400 -> '1h30m'."""
    s = int(math.ceil(seconds))
    h, rest = divmod(s, 3600)
    mnt, sec = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{mnt}m" if mnt else "") + (f"{sec}s" if sec or s == 0 else "")


def _warnings(plan: BudgetPlan, measured: Measured | None = None) -> list[str]:
    s = plan.settings
    out = []
    budget = fmt_duration(plan.budget_s)
    if (plan.batch_size, plan.grad_accum) != (s.batch_size, s.grad_accum):
        was = f" instead of {measured.step_s:.2g} s" if measured is not None else ""
        out.append(f"the {budget} budget fits no useful run at the advised batch of {s.batch_size} x {s.grad_accum}: "
                   f"batch cut to {plan.batch_size} x {plan.grad_accum} (micro-batch x accumulation; steps of "
                   f"{plan.measured.step_s:.2g} s{was}, an effective batch "
                   f"{s.batch_size * s.grad_accum // (plan.batch_size * plan.grad_accum)}x smaller than advised; "
                   "a larger --time-budget keeps it)")
    if s.eval_cap is not None:
        out.append(f"the {budget} budget evaluates on the first {s.eval_cap} examples of validation and test "
                   f"(a larger --time-budget evaluates on more)")
    if not plan.rungs and s.max_configs > 1:
        room = (f"{plan.final_steps} of the {s.final_steps_wanted} final steps wanted"
                if plan.final_steps < s.final_steps_wanted else f"the final run ({plan.final_steps} steps)")
        out.append(f"search skipped: the {budget} budget leaves room for {room} and no search of at least "
                   f"{min(s.eta, s.max_configs)} configurations x {s.min_rung} steps; the advisor's configuration "
                   "trains alone (a larger --time-budget adds a search)")
    elif plan.final_steps < s.final_steps_wanted:
        out.append(f"the {budget} budget fits {plan.final_steps} of the {s.final_steps_wanted} final steps wanted")
    if plan.rungs and plan.rungs[0].budget_steps < s.rung_target:
        out.append(f"the {budget} budget allows a first rung of {plan.rungs[0].budget_steps} steps (under "
                   f"{s.rung_target}): early rankings will be noisy")
    return out


# ---------------------------------------------------------------------------------------------
# Re-planning while running
# ---------------------------------------------------------------------------------------------
def replan(plan: BudgetPlan, measured: Measured, elapsed_s: float, rungs_done: int = 0,
           final_steps_done: int = 0) -> BudgetPlan:
    """The rest of the run re-planned from the times measured so far, at the end of rung
    `rungs_done` (0: before the search; len(plan.rungs): before or during the final run, which
    has trained `final_steps_done` steps). `elapsed_s` is every second spent since the budget
    started. Keeps the rungs already run; then picks the most work predicted to fit, in this
    order of cuts: the final run keeps its steps while later rungs promote fewer trials or are
    dropped; then the final run is shortened, never below what is trained + 1 step."""
    s = plan.settings
    if final_steps_done:
        rungs_done = len(plan.rungs)
    done = plan.rungs[:rungs_done]
    avail = (1 - s.margin) * plan.budget_s
    best = None
    for rest, F in _replan_ladder(plan, rungs_done, final_steps_done):
        rungs = done + rest
        phases, every = _phases(rungs, F, measured, s, plan.val_examples, 0.0, final_steps_done)
        # what has run is spent: count elapsed seconds, and only the rungs still to come
        phases["search"] = sum(r.n_trials * (r.new_steps * measured.step_s + measured.trial_overhead_s
                                             + plan.val_examples * measured.eval_s_per_example) for r in rest)
        phases["spent"] = elapsed_s
        if sum(phases.values()) <= avail:
            best = (rungs, F, phases, every)
    if best is None:  # not even the shortest final run fits: train the least, never nothing
        rungs, F = done, _replan_ladder(plan, rungs_done, final_steps_done)[0][1]
        phases, every = _phases(rungs, F, measured, s, plan.val_examples, 0.0, final_steps_done)
        phases.update(search=0.0, spent=elapsed_s)
        best = (rungs, F, phases, every)
    rungs, F, phases, every = best
    new = replace(plan, rungs=rungs, final_steps=F, eval_every=every, phases=phases, measured=measured,
                  elapsed_s=elapsed_s, replans=plan.replans + 1, warnings=list(plan.warnings),
                  actual=dict(plan.actual))
    note = _replan_note(plan, new, measured, rungs_done)
    if note:
        new.warnings.append(note)
    return new


def _replan_ladder(plan: BudgetPlan, rungs_done: int, final_done: int = 0) -> list[tuple[list[Rung], int]]:
    """Candidates for the rest, cheapest first: (rungs still to run, final steps)."""
    done = plan.rungs[:rungs_done]
    start = max(done[-1].budget_steps if done else 0, final_done)
    f_lo = max(start + 1, min(plan.settings.min_final_steps, plan.final_steps))
    out: list[tuple[list[Rung], int]] = [([], f) for f in range(f_lo, max(f_lo, plan.final_steps) + 1)]
    todo = plan.rungs[rungs_done:]
    for i, rung in enumerate(todo):
        prev = todo[:i]
        for k in range(2, rung.n_trials + 1):  # a rung of one trial decides nothing
            out.append((prev + [replace(rung, n_trials=k)], plan.final_steps))
    return out


def _replan_note(old: BudgetPlan, new: BudgetPlan, m: Measured, rungs_done: int) -> str | None:
    cuts = []
    if len(new.rungs) < len(old.rungs):
        cuts.append(f"{len(old.rungs) - len(new.rungs)} rung(s) dropped")
    elif new.rungs and old.rungs and new.rungs[-1].n_trials < old.rungs[-1].n_trials:
        cuts.append(f"{new.rungs[-1].n_trials} trials promoted instead of {old.rungs[-1].n_trials}")
    if new.final_steps < old.final_steps:
        cuts.append(f"final run shortened to {new.final_steps} steps from {old.final_steps}")
    if not cuts:
        return None
    where = "before the search" if rungs_done == 0 and old.rungs else (
        "for the final run" if rungs_done >= len(old.rungs) else f"after rung {rungs_done}")
    return (f"re-planned {where}: steps take {m.step_s:.2g} s (planned {old.measured.step_s:.2g} s); "
            + ", ".join(cuts) + f" to stay within the {fmt_duration(old.budget_s)} budget")


def measured_from_trials(records: list[dict], rungs: list[Rung], base: Measured, val_examples: int) -> Measured:
    """The search's measured step time, for replan: trials.jsonl records (each trial-rung's
    `seconds` cover building or restoring the Trial, its steps, one validation pass and a
    checkpoint) less the probe's overhead and evaluation times, over the steps they trained.
    Falls back to `base` (the probe) when nothing has run yet."""
    new = {r.index: r.new_steps for r in rungs}
    done = [r for r in records if r.get("rung") in new and r.get("seconds") is not None]
    steps = sum(new[r["rung"]] for r in done)
    if not steps:
        return base
    fixed = len(done) * (base.trial_overhead_s + val_examples * base.eval_s_per_example)
    step_s = (sum(float(r["seconds"]) for r in done) - fixed) / steps
    return replace(base, step_s=max(step_s, 0.5 * base.step_s))


def expected(rungs: list[Rung], final_steps: int, measured: Measured, settings: BudgetSettings,
             elapsed_s: float = 0.0) -> BudgetPlan:
    """The predicted seconds of a run planned without a budget (its rungs and final steps as
    given): what `autoft run` shows up front as the run's expected duration."""
    val_n = _val_n(settings)
    phases, every = _phases(rungs, final_steps, measured, settings, val_n, elapsed_s)
    return BudgetPlan(budget_s=math.inf, n_configs=rungs[0].n_trials if rungs else 1, eta=settings.eta,
                      rungs=list(rungs), final_steps=final_steps, eval_every=every, val_examples=val_n,
                      phases=phases, measured=measured, settings=settings, elapsed_s=elapsed_s)


class Keeper:
    """Holds a run to its budget while it runs: re-plans after every rung, before the final run
    and at each of its validation passes, from the times measured so far; records what each phase
    actually took. `clock()` is seconds since the budget started (the run's start)."""

    def __init__(self, plan: BudgetPlan, clock, warn=lambda text: None):
        self.plan, self.clock, self.warn = plan, clock, warn
        self.base = plan.measured  # the probe's times

    @property
    def budgeted(self) -> bool:
        return not math.isinf(self.plan.budget_s)

    def _replan(self, measured: Measured, **where) -> BudgetPlan:
        before = len(self.plan.warnings)
        self.plan = replan(self.plan, measured, self.clock(), **where)
        for w in self.plan.warnings[before:]:
            self.warn(w)
        return self.plan

    def search_cap_s(self) -> float | None:
        """Seconds the search may take before it must stop (its predicted share plus the plan's
        slack): past it, the trial in flight is abandoned so that the final run keeps its time."""
        if not self.budgeted:
            return None
        slack = (1 - self.plan.settings.margin) * self.plan.budget_s - self.plan.total_s
        return max(0.0, self.plan.phases["search"] + slack)

    def after_rung(self, index: int, records: list[dict]) -> list[Rung]:
        """The search's rungs from here on (the ones run stay): fewer promotions or fewer rungs
        when the machine is slower than planned."""
        if not self.budgeted:
            return self.plan.rungs
        m = measured_from_trials(records, self.plan.rungs, self.base, self.plan.val_examples)
        return self._replan(m, rungs_done=index + 1).rungs

    def final_steps(self, steps_done: int = 0, step_s: float | None = None) -> int:
        """The final run's steps, re-planned before it (steps_done 0) and at each validation pass
        (`step_s`: its measured seconds per step so far)."""
        if not self.budgeted:
            return self.plan.final_steps
        m = replace(self.plan.measured, step_s=step_s) if step_s else self.plan.measured
        return self._replan(m, rungs_done=len(self.plan.rungs), final_steps_done=steps_done).final_steps

    def record(self, phase: str, seconds: float) -> None:
        self.plan.record(phase, seconds)
