"""Successive-halving schedule and sampling: pure functions, no torch (scikit-learn as oracle)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from autoft.autotrain.schedule import (
    DEFAULT_HPARAMS, Rung, continued_cost_steps, parse_duration, sample_configs, search_dims, search_step_cap,
    successive_halving, survivors, total_cost_steps, warmup_steps,
)
from autoft.errors import AutoftError


def test_schedule_module_does_not_import_torch():
    import subprocess
    code = ("import sys, autoft.autotrain.schedule; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_nine_configs_eta3_is_the_textbook_schedule():
    rungs = successive_halving(9, eta=3, min_steps=100)
    assert [(r.index, r.n_trials, r.budget_steps) for r in rungs] == [(0, 9, 100), (1, 3, 300), (2, 1, 900)]
    # survivors continue from their checkpoints: a rung adds only the difference
    assert [r.new_steps for r in rungs] == [100, 200, 600]
    assert total_cost_steps(rungs) == 9 * 100 + 3 * 200 + 1 * 600


def test_max_steps_cuts_the_schedule_and_leaves_several_in_the_last_rung():
    rungs = successive_halving(27, eta=3, min_steps=10, max_steps=100)
    assert [(r.n_trials, r.budget_steps) for r in rungs] == [(27, 10), (9, 30), (3, 90)]
    assert all(r.budget_steps <= 100 for r in rungs)


def test_search_rungs_leave_a_fifth_of_the_final_run_for_the_decay():
    assert search_step_cap(240) == 192 and search_step_cap(10) == 8 and search_step_cap(1) == 0
    # 240 final steps: the 144-step rung fits under the cap, a 432-step one would not
    rungs = successive_halving(6, 3, 48, search_step_cap(240))
    assert [(r.n_trials, r.budget_steps) for r in rungs] == [(6, 48), (2, 144)]
    # the winner's 144 search steps count toward the final run: 6*48 + 2*96 + (240 - 144)
    assert continued_cost_steps(rungs, 240) == 288 + 192 + 96
    assert continued_cost_steps([], 240) == 240


def test_single_config_and_survivors():
    assert successive_halving(1, 3, 50) == [Rung(0, 1, 50, 0)]
    assert survivors(9, 3) == 3 and survivors(10, 3) == 3 and survivors(2, 3) == 1 and survivors(0, 3) == 0


@pytest.mark.parametrize("kw", [dict(n_configs=0), dict(eta=1), dict(min_steps=0), dict(max_steps=5)])
def test_bad_arguments_are_one_line_errors(kw):
    args = dict(n_configs=9, eta=3, min_steps=10, max_steps=None)
    args.update(kw)
    with pytest.raises(AutoftError) as e:
        successive_halving(**args)
    assert "\n" not in str(e.value)


def _sklearn_schedule(n, eta, min_r, max_r):
    """Run scikit-learn's HalvingRandomSearchCV with `n` candidates on a trivial problem and read
    its schedule (n_resources_, n_candidates_). The resource is a dummy parameter so any budget
    is allowed."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    class Dummy(ClassifierMixin, BaseEstimator):
        def __init__(self, budget=1, c=0):
            self.budget, self.c = budget, c

        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return np.zeros(len(X), dtype=int)

    X = np.zeros((20, 1))
    y = np.array([0, 1] * 10)
    s = HalvingRandomSearchCV(Dummy(), {"c": list(range(n))}, n_candidates=n, factor=eta,
                              resource="budget", min_resources=min_r, max_resources=max_r,
                              cv=2, random_state=0, refit=False)
    s.fit(X, y)
    return s.n_resources_, s.n_candidates_


@pytest.mark.parametrize("n,eta,min_r,max_r", [
    (9, 3, 10, 1000), (27, 3, 10, 1000), (10, 3, 10, 1000), (8, 2, 5, 1000), (27, 3, 10, 100),
    (12, 2, 4, 40), (5, 3, 7, 1000), (81, 3, 1, 20), (16, 4, 3, 1000), (2, 3, 10, 1000),
])
def test_schedule_matches_scikit_learn_halving(n, eta, min_r, max_r):
    sk_res, sk_cand = _sklearn_schedule(n, eta, min_r, max_r)
    rungs = successive_halving(n, eta, min_r, max_r)
    # same number of rungs and the same per-rung budgets
    assert [r.budget_steps for r in rungs] == list(sk_res)
    # scikit-learn keeps ceil(n/eta) per rung, we keep floor(n/eta^i) (the paper): equal when
    # eta^i divides n, else exactly one fewer
    for i, (r, c) in enumerate(zip(rungs, sk_cand)):
        assert r.n_trials == n // eta**i
        assert c == math.ceil(n / eta**i)
        assert r.n_trials == c - (0 if n % eta**i == 0 else 1)


SPACE = {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
         "lora_r": [8, 16, 64], "lora_dropout": [0.0, 0.05, 0.1], "weight_decay": {"low": 0.0, "high": 0.1}}


def test_sampling_is_seeded_and_covers_the_lr_range():
    a = sample_configs(SPACE, 9, seed=1, technique="lora")
    b = sample_configs(SPACE, 9, seed=1, technique="lora")
    c = sample_configs(SPACE, 9, seed=2, technique="lora")
    assert a == b and a != c
    lrs = sorted(cfg["learning_rate"] for cfg in a)
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs)
    # stratified on the log scale: one point per ninth of the log range
    logs = [(math.log(lr) - math.log(1e-5)) / (math.log(1e-3) - math.log(1e-5)) for lr in lrs]
    assert all(i / 9 - 0.01 <= u <= (i + 1) / 9 + 0.01 for i, u in enumerate(logs))
    for cfg in a:
        assert set(cfg) == set(DEFAULT_HPARAMS) - {"freeze_layers", "layer_decay"}
        assert cfg["lora_r"] in (8, 16, 64) and cfg["lora_alpha"] == 2 * cfg["lora_r"]
        assert cfg["lora_dropout"] in (0.0, 0.05, 0.1)
        assert cfg["weight_decay"] == DEFAULT_HPARAMS["weight_decay"]  # third knob not searched


def test_secondary_knobs_follow_the_technique():
    assert [d.name for d in search_dims(SPACE, "lora")] == ["learning_rate", "lora_r", "lora_dropout"]
    assert [d.name for d in search_dims(SPACE, "full")] == ["learning_rate", "weight_decay"]
    assert [d.name for d in search_dims({"lr": [2e-5, 1e-4]}, "full")] == ["learning_rate"]
    with pytest.raises(AutoftError):
        search_dims({"weight_decay": [0.0, 0.1]}, "full")


def test_warmup_and_durations():
    assert warmup_steps(0.1, 300) == 30
    assert warmup_steps(0.5, 300, cap=20) == 19  # warmup ends inside the first rung
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90 and parse_duration(None) is None
    for bad in ("30x", "m", "5 minutes"):
        with pytest.raises(AutoftError):
            parse_duration(bad)


def test_reads_the_advisors_search_space_shape():
    # advisor JSON: [low, high] float pairs are ranges, longer lists are choices
    space = {"learning_rate": [1e-4, 1e-3], "weight_decay": [0.0, 0.1], "warmup_ratio": [0.0, 0.1],
             "lora_rank": [8, 16, 64], "lora_dropout": [0.0, 0.05, 0.1]}
    dims = {d.name: d for d in search_dims(space, "lora")}
    assert list(dims) == ["learning_rate", "lora_r", "lora_dropout"]
    assert dims["learning_rate"].log and (dims["learning_rate"].low, dims["learning_rate"].high) == (1e-4, 1e-3)
    assert dims["lora_r"].choices == (8, 16, 64)
    full = {d.name: d for d in search_dims(space, "full")}
    assert full["weight_decay"].choices is None and (full["weight_decay"].low, full["weight_decay"].high) == (0.0, 0.1)
    cfgs = sample_configs(space, 6, seed=0, technique="freeze", base={"freeze_layers": 4, "lora_r": 8})
    assert all(0.0 <= c["weight_decay"] <= 0.1 and c["freeze_layers"] == 4 for c in cfgs)
    assert len({c["weight_decay"] for c in cfgs}) == 6  # sampled, not two choices
    # a configuration carries only the knobs its technique reads: no LoRA rank for layer freezing
    assert all("lora_r" not in c and "lora_alpha" not in c for c in cfgs)
    full_cfgs = sample_configs(space, 3, seed=0, technique="full", base={"freeze_layers": 4})
    assert set(full_cfgs[0]) == {"learning_rate", "weight_decay", "warmup_ratio", "layer_decay"}
    lora_cfgs = sample_configs(space, 3, seed=0, technique="lora")
    assert {"lora_r", "lora_alpha", "lora_dropout"} <= set(lora_cfgs[0]) and "freeze_layers" not in lora_cfgs[0]


def test_search_ranking_breaks_metric_ties_by_validation_loss():
    # after a short first rung every trial may predict the majority class: equal accuracy, but the
    # validation loss already separates the trial that is learning from the ones that are not
    from autoft.autotrain.search import _rank

    recs = [
        {"trial": 0, "status": "ok", "metric": 0.53, "eval": {"loss": 0.69}},
        {"trial": 1, "status": "ok", "metric": 0.53, "eval": {"loss": 0.52}},
        {"trial": 2, "status": "failed-nan", "metric": None, "eval": {}},
        {"trial": 3, "status": "ok", "metric": 0.60, "eval": {"loss": 0.80}},
        {"trial": 4, "status": "ok", "metric": 0.53, "eval": {}},
    ]
    assert [r["trial"] for r in _rank(recs, higher_is_better=True)] == [3, 1, 0, 4]
    # lower-is-better metrics (generation's eval loss) keep their order; ties fall to trial id
    gen = [{"trial": 0, "status": "ok", "metric": 2.0, "eval": {"eval_loss": 2.0}},
           {"trial": 1, "status": "ok", "metric": 1.5, "eval": {"eval_loss": 1.5}}]
    assert [r["trial"] for r in _rank(gen, higher_is_better=False)] == [1, 0]


def test_promotion_ranking_by_loss_ignores_chance_level_accuracy():
    # measured on sst2 after 13 steps (benchmarks/results/search_quality_short_budget.json): accuracy at chance
    # favours the lowest learning rates, the loss orders the trials by how fast they learn
    from autoft.autotrain.search import _rank

    recs = [{"trial": i, "status": "ok", "metric": acc, "eval": {"loss": loss}}
            for i, (acc, loss) in enumerate([(0.555, 0.6912), (0.54, 0.6899), (0.53, 0.6888),
                                             (0.53, 0.6873), (0.53, 0.6869), (0.53, 0.6890)])]
    recs.append({"trial": 6, "status": "ok", "metric": 0.53, "eval": {"loss": float("nan")}})
    assert [r["trial"] for r in _rank(recs, True, by="loss")][:3] == [4, 3, 2]
    assert [r["trial"] for r in _rank(recs, True, by="metric")][:2] == [0, 1]
    assert _rank(recs, True, by="loss")[-1]["trial"] == 6  # a NaN loss ranks last
    # equal losses fall back to the metric
    tie = [{"trial": 0, "status": "ok", "metric": 0.5, "eval": {"loss": 0.6}},
           {"trial": 1, "status": "ok", "metric": 0.7, "eval": {"loss": 0.6}}]
    assert [r["trial"] for r in _rank(tie, True, by="loss")] == [1, 0]
    with pytest.raises(ValueError):
        _rank(tie, True, by="accuracy")


def test_model_dropout_joins_the_search_only_where_the_space_has_it():
    # the advisor's shape on small data with full fine-tuning (rule SEARCH-003)
    space = {"learning_rate": [1e-5, 1e-4], "weight_decay": [0.0, 0.1], "warmup_ratio": [0.0, 0.1],
             "layer_decay": [0.8, 0.95], "model_dropout": [0.0, 0.1, 0.2]}
    assert [d.name for d in search_dims(space, "full")] == ["learning_rate", "model_dropout", "weight_decay"]
    assert [d.name for d in search_dims(space, "freeze")] == ["learning_rate", "model_dropout", "layer_decay"]
    cfgs = sample_configs(space, 9, seed=0, technique="full")
    # stratified over three choices: each value three times
    assert sorted(c["model_dropout"] for c in cfgs) == [0.0] * 3 + [0.1] * 3 + [0.2] * 3
    # without it in the space, configurations carry no model_dropout (the model keeps its own)
    del space["model_dropout"]
    assert all("model_dropout" not in c for c in sample_configs(space, 3, seed=0, technique="full"))
