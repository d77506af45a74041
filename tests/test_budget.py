"""The time-budget planner and re-planner as pure functions (autotrain/budget.py): budget -> plan,
more budget never less work, the refusal of a budget too small with the least budget that works,
and re-planning from slower measured times."""
from __future__ import annotations

from dataclasses import replace

import pytest

from autoft.autotrain.budget import (BudgetSettings, Measured, fmt_budget, least_budget, plan_budget, replan,
                                     search_rungs)
from autoft.autotrain.schedule import continued_cost_steps, parse_duration, search_step_cap
from autoft.errors import AutoftError

M = Measured(step_s=0.5, eval_s_per_example=0.01, trial_overhead_s=3.0, save_s=2.0)
S = BudgetSettings(final_steps_wanted=800, n_val=872, n_test=1821, max_configs=9)
BUDGETS = [80, 100, 150, 240, 360, 480, 600, 750, 900, 1050, 1200, 1500, 1800, 2400, 3600, 7200]


def test_every_plan_fits_its_budget_with_the_margin():
    for t in BUDGETS:
        p = plan_budget(t, M, S, elapsed_s=5.0)
        assert p.total_s <= (1 - S.margin) * t + 1e-9, t
        assert p.phases["spent"] == 5.0
        assert p.final_steps <= S.final_steps_wanted and p.n_configs <= S.max_configs


def test_more_budget_never_plans_less_work():
    plans = [plan_budget(t, M, S) for t in BUDGETS]
    for a, b in zip(plans, plans[1:]):
        assert b.final_steps >= a.final_steps
        assert b.n_configs >= a.n_configs
        assert b.search_steps + b.final_steps - b.winner_steps >= a.search_steps + a.final_steps - a.winner_steps
        assert b.total_s >= a.total_s - 1e-9
    assert plans[0].n_configs == 1 and plans[-1].n_configs == S.max_configs
    assert plans[-1].final_steps == S.final_steps_wanted


def test_the_final_run_first_then_a_first_rung_of_100_then_more_configurations():
    seen_search = False
    for t in range(60, 4000, 20):
        try:
            p = plan_budget(t, M, S)
        except AutoftError:
            continue
        if not p.search:
            assert not seen_search  # the search, once there, does not disappear with more budget
            continue
        seen_search = True
        assert p.final_steps == S.final_steps_wanted  # a search only when the whole final run fits
        if p.n_configs > min(S.eta, S.max_configs):
            assert p.rungs[0].budget_steps == S.rung_target  # more configurations only at a 100-step rung
        assert p.rungs[0].budget_steps >= S.min_rung
        assert all(r.budget_steps <= search_step_cap(p.final_steps) for r in p.rungs)
    assert seen_search


def test_search_rungs_match_the_search_and_the_continued_cost():
    rungs = search_rungs(9, 3, 100, 800)
    assert [(r.n_trials, r.budget_steps) for r in rungs] == [(9, 100), (3, 300)]  # the single last rung is dropped
    assert search_rungs(9, 3, 100, 300) == search_rungs(9, 3, 100, 300)[:1]  # capped at 80% of F: 240
    assert search_rungs(1, 3, 100, 800) == [] and search_rungs(3, 3, 100, 110) == []
    p = plan_budget(3600, M, S)
    train_steps = (p.phases["search"] - sum(r.n_trials * (M.trial_overhead_s + p.val_examples * M.eval_s_per_example)
                                            for r in p.rungs)) / M.step_s
    assert train_steps == pytest.approx(sum(r.cost_steps for r in p.rungs))
    assert p.search_steps + p.final_steps - p.winner_steps == continued_cost_steps(p.rungs, p.final_steps)


def test_only_the_final_run_fits_skips_the_search_with_a_warning():
    p = plan_budget(300, M, S)
    assert not p.search and p.n_configs == 1 and S.min_final_steps <= p.final_steps < S.final_steps_wanted
    assert any(w.startswith("search skipped") for w in p.warnings)
    assert "search: none" in p.text()
    alone = plan_budget(300, M, BudgetSettings(final_steps_wanted=800, n_val=872, n_test=1821, max_configs=1))
    assert not any("search skipped" in w for w in alone.warnings)  # --no-search: nothing to warn about


def test_a_budget_too_small_is_refused_with_the_least_budget_that_works():
    least = least_budget(M, S, elapsed_s=5.0)
    plan_budget(least, M, S, elapsed_s=5.0)  # the least budget is accepted...
    with pytest.raises(AutoftError) as err:
        plan_budget(least - 10, M, S, elapsed_s=5.0)  # ...and below it refused
    text = str(err.value)
    assert "\n" not in text and "too small" in text and "10 optimizer steps" in text
    assert f"--time-budget {fmt_budget(least)}" in text
    assert parse_duration(fmt_budget(least)) == least
    with pytest.raises(AutoftError, match="positive"):
        plan_budget(0, M, S)


def test_plan_text_and_dict_say_predicted_and_actual_per_phase():
    p = plan_budget(1800, M, S)
    text = p.text()
    assert text.startswith("search: 9 configurations, rungs of 100 and 300 steps, about ")
    assert "final run: 800 steps (continuing the winner from step 300), about " in text
    assert "evaluation: about 27 s" in text
    p.record("search", 700.0)
    d = p.to_dict()
    assert d["phases"]["search"] == {"predicted_s": round(p.phases["search"], 1), "actual_s": 700.0}
    assert d["phases"]["final"]["actual_s"] is None and d["n_configs"] == 9 and d["continued_from_step"] == 300
    assert d["predicted_total_s"] == pytest.approx(p.total_s, abs=0.1)
    assert d["phases"]["spent"] == {"predicted_s": 0.0, "actual_s": 0.0} and d["replanned_total_s"] is None


def test_a_replan_keeps_the_first_prediction_for_predicted_vs_actual():
    p = plan_budget(1800, M, S, elapsed_s=60.0)
    q = replan(p, replace(M, step_s=2 * M.step_s), elapsed_s=900.0, rungs_done=len(p.rungs))
    q.record("final", 500.0)
    d = q.to_dict()
    # the user was told p's figures before training: those stay the prediction
    assert d["predicted_total_s"] == pytest.approx(p.total_s, abs=0.1)
    assert d["phases"]["final"]["predicted_s"] == round(p.phases["final"], 1)
    assert d["phases"]["final"]["replanned_s"] == round(q.phases["final"], 1) != d["phases"]["final"]["predicted_s"]
    assert d["phases"]["spent"] == {"predicted_s": 60.0, "actual_s": 60.0, "replanned_s": 900.0}
    assert d["actual_total_s"] == 560.0 and d["replanned_total_s"] == pytest.approx(q.total_s, abs=0.1)
    # the line shown before training stays the plan's text; the re-plan's (what is left) is beside it
    assert d["text"] == p.text() != q.text() == d["replanned_text"]
    assert p.to_dict()["replanned_text"] is None


def test_final_evaluations_are_fewer_when_one_costs_more_than_its_share():
    cheap = plan_budget(3600, Measured(step_s=0.5, eval_s_per_example=0.001), S)
    assert cheap.eval_every == 80  # 10 validation passes over 800 steps
    dear = plan_budget(3600, M, S)  # one pass over 872 examples: 8.7 s, 15% of 800 x 0.5 s allows 6
    assert dear.eval_every == 134
    slow_eval = plan_budget(3600 * 4, Measured(step_s=0.5, eval_s_per_example=0.2), S)
    assert slow_eval.eval_every == 800  # one pass costs more than its share: a single validation


def test_replan_with_the_probed_times_changes_nothing():
    p = plan_budget(1800, M, S)
    spent = p.phases["spent"] + p.rungs[0].n_trials * (100 * M.step_s + M.trial_overhead_s + p.val_examples * 0.01)
    q = replan(p, M, elapsed_s=spent, rungs_done=1)
    assert (q.rungs, q.final_steps) == (p.rungs, p.final_steps) and q.warnings == p.warnings
    assert q.replans == 1


def test_replan_when_slower_promotes_fewer_before_shortening_the_final_run():
    p = plan_budget(1200, M, S)  # 8 configurations in rungs of 100 and 300 steps: little slack
    assert [(r.n_trials, r.budget_steps) for r in p.rungs] == [(8, 100), (2, 300)]
    slow = Measured(step_s=0.55, eval_s_per_example=0.01, trial_overhead_s=3.0, save_s=2.0)
    spent = p.rungs[0].n_trials * (100 * slow.step_s + 3.0 + p.val_examples * 0.01)
    q = replan(p, slow, elapsed_s=spent, rungs_done=1)
    assert q.total_s <= (1 - S.margin) * 1200
    assert q.final_steps == p.final_steps  # the cut is in the search first...
    assert q.rungs[:1] == p.rungs[:1] and (len(q.rungs) < len(p.rungs) or q.rungs[1].n_trials < p.rungs[1].n_trials)
    assert any(w.startswith("re-planned after rung 1") for w in q.warnings)
    much = Measured(step_s=0.7, eval_s_per_example=0.01, trial_overhead_s=3.0, save_s=2.0)
    spent = p.rungs[0].n_trials * (100 * much.step_s + 3.0 + p.val_examples * 0.01)
    r = replan(p, much, elapsed_s=spent, rungs_done=1)
    assert r.rungs == p.rungs[:1] and 400 < r.final_steps < p.final_steps  # ...then the final run
    assert r.total_s <= (1 - S.margin) * 1200 and "shortened" in r.warnings[-1]


def test_replan_never_plans_nothing_and_never_more_than_planned():
    p = plan_budget(1800, M, S)
    fast = Measured(step_s=0.1, eval_s_per_example=0.001, trial_overhead_s=0.5, save_s=0.5)
    assert replan(p, fast, 10.0).final_steps == p.final_steps and replan(p, fast, 10.0).rungs == p.rungs
    out = replan(p, M, elapsed_s=1800.0, rungs_done=2)  # the budget is gone before the final run
    assert out.final_steps == p.winner_steps + 1 and out.rungs == p.rungs  # still trains and saves


def test_replan_during_the_final_run_shortens_what_is_left():
    p = plan_budget(1800, M, S)
    slow = Measured(step_s=1.0, eval_s_per_example=0.01, trial_overhead_s=3.0, save_s=2.0)
    q = replan(p, slow, elapsed_s=1300.0, final_steps_done=500)
    assert q.rungs == p.rungs and 500 < q.final_steps < p.final_steps
    # only the steps still to train (and their share of validation passes) are counted
    assert (q.final_steps - 500) * slow.step_s <= q.phases["final"] < (q.final_steps - p.winner_steps) * slow.step_s
    assert q.total_s <= (1 - S.margin) * 1800 and "for the final run" in q.warnings[-1]
    gone = replan(p, slow, elapsed_s=1800.0, final_steps_done=500)
    assert gone.final_steps == 501  # out of time: stop at the next step, evaluate and save


def test_the_plans_rungs_are_the_searchs_rungs():
    from autoft.autotrain.search import SearchSettings, plan_rungs

    for n, r, f in ((9, 100, 800), (6, 50, 400), (4, 100, 500), (27, 30, 1000), (3, 100, 130)):
        want = plan_rungs(SearchSettings(n_trials=n, eta=3, min_steps=r, max_steps=search_step_cap(f)))
        assert search_rungs(n, 3, r, f) == want, (n, r, f)


def test_without_a_budget_the_plan_is_the_whole_run_and_its_duration():
    import math

    p = plan_budget(math.inf, M, S)
    assert p.n_configs == 9 and p.final_steps == 800 and p.rungs[0].budget_steps == 100
    assert p.text().endswith("in all)") and p.to_dict()["budget_s"] is None


def test_measured_step_time_from_the_search_records():
    from autoft.autotrain.budget import measured_from_trials

    p = plan_budget(1800, M, S)
    one = M.trial_overhead_s + p.val_examples * M.eval_s_per_example
    recs = [{"trial": t, "rung": 0, "seconds": 100 * 0.7 + one} for t in range(9)]
    m = measured_from_trials(recs, p.rungs, M, p.val_examples)
    assert m.step_s == pytest.approx(0.7) and m.eval_s_per_example == M.eval_s_per_example
    assert measured_from_trials([], p.rungs, M, p.val_examples) is M
    fast = [{"trial": 0, "rung": 0, "seconds": one}]  # all overhead: the probe's figure bounds it
    assert measured_from_trials(fast, p.rungs, M, p.val_examples).step_s == pytest.approx(0.5 * M.step_s)


# -- a useful run before a refusal: the accumulation cut, the evaluation's share ------------------
SLOW = Measured(step_s=52.0, eval_s_per_example=1.5, trial_overhead_s=20.0, save_s=3.0)  # SmolLM2, 4x4 on 2 cores
GEN = BudgetSettings(final_steps_wanted=675, n_val=32, n_test=32, max_configs=9, grad_accum=4, batch_size=4)


def test_accumulation_ladder_halves_down_to_its_floor():
    from autoft.autotrain.budget import accumulation_ladder

    assert accumulation_ladder(8) == [8, 4, 2, 1] and accumulation_ladder(6) == [6, 3, 1]
    assert accumulation_ladder(1) == [1] and accumulation_ladder(8, floor=2) == [8, 4, 2]


def test_accumulation_is_cut_only_when_no_useful_run_fits_at_the_advised_batch():
    least_at_4 = least_budget(SLOW, BudgetSettings(**{**GEN.__dict__, "min_grad_accum": 4, "batch_size": 1}))
    roomy = plan_budget(least_at_4, SLOW, GEN)
    assert roomy.grad_accum == 4 and not any("batch cut" in w for w in roomy.warnings)
    tight = plan_budget(480, SLOW, GEN)  # 10 steps of 52 s cannot fit 8 minutes; of 26 s they can
    assert tight.grad_accum == 2 and tight.measured.step_s == pytest.approx(26.0)  # the least cut that fits
    assert tight.total_s <= 0.9 * 480 and tight.final_steps >= GEN.min_final_steps
    assert any("batch cut to 4 x 2" in w and "26 s instead of 52 s" in w for w in tight.warnings)
    assert tight.to_dict()["grad_accum"] == 2
    tighter = plan_budget(400, SLOW, GEN)
    assert tighter.grad_accum == 1 and tighter.measured.step_s == pytest.approx(13.0)
    smaller = plan_budget(300, SLOW, GEN)  # then the micro-batch: 2 x 1, steps of 6.5 s
    assert (smaller.batch_size, smaller.grad_accum) == (2, 1) and smaller.measured.step_s == pytest.approx(6.5)
    assert smaller.to_dict()["batch_size"] == 2
    with pytest.raises(AutoftError) as err:  # the least budget is the one at the smallest batch
        plan_budget(150, SLOW, GEN)
    assert "at the least batch, 1 x 1" in str(err.value) and f"--time-budget {fmt_budget(least_budget(SLOW, GEN))}" in str(err.value)
    floor = plan_budget(480, SLOW, BudgetSettings(**{**GEN.__dict__, "min_grad_accum": 4}))
    assert floor.grad_accum == 4 and floor.batch_size < 4  # several processes keep one micro-batch each


def test_the_probes_steps_are_not_counted_twice():
    fresh = plan_budget(900, SLOW, GEN)
    kept = plan_budget(900, SLOW, BudgetSettings(**{**GEN.__dict__, "trained_steps": 3}))
    assert kept.phases["final"] < fresh.phases["final"] and kept.final_steps >= fresh.final_steps


def test_evaluation_is_capped_to_its_share_of_the_budget_and_grows_with_it():
    from autoft.autotrain.budget import EVAL_SHARE, MIN_EVAL_EXAMPLES, eval_cap

    assert eval_cap(None, 1.5, 200, 200) is None and eval_cap(3600, 0.001, 200, 200, baseline=True) is None
    assert eval_cap(480, 1.5, 200, 200, baseline=True) == 26  # 8 minutes, 1.5 s per example: 3 passes of 26
    assert eval_cap(240, 1.5, 200, 200, baseline=True) == MIN_EVAL_EXAMPLES  # 13 would fit: never under the floor
    assert eval_cap(2400, 1.5, 200, 200, baseline=True) == int(EVAL_SHARE * 2400 / (3 * 1.5)) == 133
    assert eval_cap(3600, 1.5, 200, 200, baseline=True) is None  # 600 examples x 1.5 s: a quarter of an hour
    caps = [eval_cap(t, 1.5, 500, 500, baseline=True) or 500 for t in (300, 600, 1200, 2400, 4800, 9600)]
    assert caps == sorted(caps) and caps[0] == MIN_EVAL_EXAMPLES and caps[-1] == 500
    assert eval_cap(60, 1.5, 10, 12) == 12  # splits smaller than the floor: all of them


def test_scoring_by_generation_counts_in_the_evaluation_and_its_share():
    from autoft.autotrain.budget import eval_cap

    plain = eval_cap(1200, 1.0, 250, 500, baseline=True)
    gen = eval_cap(1200, 1.0, 250, 500, baseline=True, gen_s_per_example=3.0, gen_examples=200)
    assert gen < plain  # two generation passes (tuned and base model) per example cost their share too
    assert (min(250, gen) + 2 * gen) * 1.0 + 2 * min(gen, 200) * 3.0 <= 0.25 * 1200
    g1 = gen + 1
    assert (min(250, g1) + 2 * g1) * 1.0 + 2 * min(g1, 200) * 3.0 > 0.25 * 1200  # the largest that fits
    m = Measured(step_s=0.5, eval_s_per_example=0.01, gen_s_per_example=2.0)
    base = plan_budget(3600, m, S)
    scored = plan_budget(3600, m, BudgetSettings(**{**S.__dict__, "gen_examples": 50}))
    assert scored.phases["evaluation"] == pytest.approx(base.phases["evaluation"] + 2 * 50 * 2.0)


# ---------------------------------------------------------------------------------------------
# The final run held to the budget between validation passes
# ---------------------------------------------------------------------------------------------
class _FakeTrial:
    """Trains instantly, reporting `step_s` seconds per step; validation loss falls with steps."""

    def __init__(self, step_s: float):
        self.step_s, self.steps_done, self.decay_start = step_s, 0, 0
        self.chunks, self.evals, self.schedule = [], [], None

    def train(self, n, on_step=None):
        self.chunks.append(n)
        self.steps_done += n
        return {"samples": 4 * n, "seconds": self.step_s * n}

    def evaluate(self, split, max_examples=None):
        self.evals.append(self.steps_done)
        return {"eval_loss": 1.0 / self.steps_done}

    def set_schedule(self, **kw):
        self.schedule = kw

    def save_checkpoint(self, path):
        pass


class _TrainSecondsKeeper:
    """A budget of `train_s` seconds of training: as many steps as fit at the measured step time."""

    budgeted = True

    def __init__(self, train_s: float, planned: int):
        self.train_s, self.planned = train_s, planned

    def final_steps(self, steps_done=0, step_s=None):
        return self.planned if step_s is None else min(self.planned, int(self.train_s // step_s))


class _Quiet:
    def emit(self, *a, **kw):
        pass


def _final_run(tmp_path, keeper, steps=11, eval_every=20):
    from types import SimpleNamespace

    from autoft.autotrain.final import FinalRun

    plan = SimpleNamespace(final_steps=steps, eval_every=eval_every, metric="eval_loss", higher_is_better=False,
                           patience=3, trial=SimpleNamespace(max_eval_examples=None))
    return FinalRun(plan, bundle=None, out=tmp_path, progress=_Quiet(), trial_factory=object(), keeper=keeper)


def test_a_final_run_shorter_than_its_validation_interval_is_still_held_to_the_budget(tmp_path):
    from autoft.autotrain.final import FinalState

    # planned: 11 steps validated once, at the end; the machine runs 30 s steps and the budget
    # leaves 240 s of training: the run stops at 8 steps (and validates there), not 11
    run, trial = _final_run(tmp_path, _TrainSecondsKeeper(240, 11)), _FakeTrial(30.0)
    run._train(trial, FinalState(history={"train": [], "validation": []}), {"continued_from_step": 0})
    assert trial.steps_done == 8 and run.total == 8
    assert max(trial.chunks) <= 2 and trial.evals == [8]  # re-planned every ceil(11 / 8) = 2 steps
    assert trial.schedule["total_steps"] == 8  # the learning rate decays to 0 at the new end


class _LongestFirstTrial(_FakeTrial):
    """Steps cost `s_per_token` x their padded tokens, the stream's longest micro-batches first
    (as autoft's data stream orders them): `widths[i]` padded tokens for micro-batch i."""

    grad_accum, batch_size = 1, 4

    def __init__(self, widths: list[float], s_per_token: float):
        super().__init__(0.0)
        self.widths, self.s_per_token, self.seconds = widths, s_per_token, 0.0

    def train(self, n, on_step=None):
        s = self.s_per_token * sum(self.widths[self.steps_done:self.steps_done + n])
        self.chunks.append(n)
        self.steps_done += n
        self.seconds += s
        return {"samples": 4 * n, "seconds": s}

    def padded_tokens_per_micro_batch(self, micro_batches=None, batch_size=None):
        first = self.widths[:micro_batches or len(self.widths)]
        return sum(first) / len(first)


class _RemainingKeeper:
    """A budget of `train_s` seconds of training; re-plans as the real Keeper does: the steps done
    plus as many more as the time left holds at `step_s` each (the steps ahead's cost)."""

    budgeted = True

    def __init__(self, train_s: float, planned: int, trial):
        self.train_s, self.planned, self.trial = train_s, planned, trial

    def final_steps(self, steps_done=0, step_s=None):
        if step_s is None:
            return self.planned
        return min(self.planned, steps_done + int((self.train_s - self.trial.seconds) // step_s + 1e-9))


def test_a_re_plan_carries_the_first_long_steps_cost_to_the_shorter_steps_ahead(tmp_path):
    from autoft.autotrain.final import FinalState

    # 11 planned steps: the first 3 of 150 padded tokens, then 8 of 100, at 0.2 s per token: 250 s,
    # exactly the budget. The first steps' mean (30 s) taken for every step ahead would cut the run
    # to 8 steps; carried by padded tokens (21 s ahead) all 11 fit.
    trial = _LongestFirstTrial([150.0] * 3 + [100.0] * 8, 0.2)
    run = _final_run(tmp_path, _RemainingKeeper(250.0, 11, trial))
    run._train(trial, FinalState(history={"train": [], "validation": []}), {"continued_from_step": 0})
    assert trial.steps_done == 11 and run.total == 11 and trial.schedule is None
    assert trial.seconds == pytest.approx(250.0)
    # the same stream on a machine 20% slower than that is cut, and ends within the budget
    slow = _LongestFirstTrial([150.0] * 3 + [100.0] * 8, 0.24)
    run = _final_run(tmp_path, _RemainingKeeper(250.0, 11, slow))
    run._train(slow, FinalState(history={"train": [], "validation": []}), {"continued_from_step": 0})
    assert 8 <= slow.steps_done < 11 and slow.seconds <= 250.0 + 0.24 * 150


def test_without_a_budget_the_final_run_trains_to_its_validation_pass_in_one_go(tmp_path):
    from autoft.autotrain.final import FinalState

    run, trial = _final_run(tmp_path, None), _FakeTrial(30.0)
    run._train(trial, FinalState(history={"train": [], "validation": []}), {"continued_from_step": 0})
    assert trial.chunks == [11] and trial.evals == [11] and trial.schedule is None
