"""The flags of issue 18 through the CLI: class weights and the search metric decided by the
advisor from the data (and overridden), sentence-pair and multi-label data, --report-to."""
from __future__ import annotations

import csv
import json

import pytest

from autoft.cli import build_parser, main


def advise(capsys, *argv: str) -> tuple[int, dict | str, str]:
    code = main(["advise", "--gpu", "cpu", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else out), err


def _rules(d: dict) -> list[str]:
    return [r["rule"] for r in d["reasons"]]


def test_heavy_imbalance_turns_on_weights_and_macro_f1(capsys, shared_data):
    code, d, _ = advise(capsys, "--data", str(shared_data / "go_emotions"), "--json")
    assert code == 0
    assert d["class_weights"] == "balanced" and d["metric"] == "macro_f1" and d["metric_higher_is_better"]
    assert {"WEIGHT-001", "METRIC-002"} <= set(_rules(d))
    assert d["question"]["multi_label"] is True and d["question"]["imbalance_ratio"] > 100


def test_pairs_with_a_two_thirds_majority_rank_by_macro_f1_unweighted(capsys, shared_data):
    code, d, _ = advise(capsys, "--data", str(shared_data / "mrpc"), "--json")
    assert code == 0 and d["class_weights"] == "none" and d["metric"] == "macro_f1"
    assert "METRIC-003" in _rules(d) and "WEIGHT-001" not in _rules(d)
    assert d["seq_len"] >= 96          # the pair's length (p99 93 tokens estimated), not one side's


def test_overrides_win_and_are_said(capsys, shared_data):
    code, d, _ = advise(capsys, "--data", str(shared_data / "mrpc"), "--class-weights", "balanced",
                        "--metric", "accuracy", "--json")
    assert code == 0 and d["class_weights"] == "balanced" and d["metric"] == "accuracy"
    overrides = [r["because"] for r in d["reasons"] if r["rule"] == "OVERRIDE"]
    assert "class weights balanced (you set it)" in overrides and "search metric accuracy (you set it)" in overrides
    code, d, _ = advise(capsys, "--data", str(shared_data / "go_emotions"), "--class-weights", "auto", "--json")
    assert d["class_weights"] == "balanced"           # auto: the rule decides


def test_human_output_names_the_objective(capsys, shared_data):
    code, out, _ = advise(capsys, "--data", str(shared_data / "go_emotions"))
    assert code == 0 and "objective      class-weighted loss (balanced); the search ranks by validation macro_f1" in out


@pytest.mark.parametrize("argv,msg", [
    (["--metric", "accuracy"], "--metric accuracy is not defined for multi-label data"),
    (["--metric", "micro_f1", "--task", "generation"], "--metric micro_f1 is for classification"),
])
def test_metrics_that_do_not_suit_the_data_are_refused(capsys, shared_data, argv, msg):
    data = ["--data", str(shared_data / ("go_emotions" if "generation" not in argv else "alpaca"))]
    code, _, err = advise(capsys, *data, *argv)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_label_columns_and_text_pair_flags_reach_the_data_layer(capsys, tmp_path):
    p = tmp_path / "tox.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["claim", "evidence", "toxic", "insult", "other"])
        for i in range(60):
            w.writerow([f"claim {i}", f"evidence {i}", i % 2, int(i % 3 == 0), i % 2])
    code, d, _ = advise(capsys, "--data", str(p), "--text-column", "claim", "--text-pair-column", "evidence",
                        "--label-columns", "toxic,insult", "--json")
    assert code == 0 and d["question"]["multi_label"] is True and d["num_labels"] == 2 and d["metric"] == "micro_f1"


def test_small_data_full_fine_tuning_searches_the_model_dropout(capsys):
    code, d, _ = advise(capsys, "--task", "classification", "--data-size", "2000", "--technique", "full", "--json")
    assert code == 0 and d["search_space"]["model_dropout"] == [0.0, 0.1, 0.2] and "SEARCH-003" in _rules(d)
    code, d, _ = advise(capsys, "--task", "classification", "--data-size", "50000", "--technique", "full", "--json")
    assert "model_dropout" not in d["search_space"]


def test_run_flags_become_options_and_back(capsys):
    from autoft.autotrain.options import to_argv
    from autoft.cli.run import options_from_args

    argv = ["run", "--data", "d/", "--report-to", "tensorboard,mlflow", "wandb", "--text-pair-column", "b",
            "--label-columns", "x,y", "--no-allow-empty-labels", "--class-weights", "balanced", "--metric", "loss"]
    opts = options_from_args(build_parser().parse_args(argv))
    assert opts.report_to == ["tensorboard", "mlflow", "wandb"] and opts.allow_empty_labels is False
    assert opts.data_columns() == {"text_pair_column": "b", "label_columns": "x,y", "allow_empty_labels": False}
    assert opts.question["class_weights"] == "balanced" and opts.question["metric"] == "loss"
    back = to_argv(opts)
    assert back[back.index("--report-to"):][:4] == ["--report-to", "tensorboard", "mlflow", "wandb"]
    assert "--no-allow-empty-labels" in back and options_from_args(build_parser().parse_args(back[1:])) == opts
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "--report-to", "neptune"])
    assert e.value.code == 2 and "unknown tracker 'neptune'" in capsys.readouterr().err


def test_the_plan_takes_weights_and_metric_from_the_recommendation(shared_data):
    from autoft.advisor.recommend import Recommendation
    from autoft.autotrain import imbalance
    from autoft.autotrain.data import load_data
    from autoft.autotrain.options import RunOptions
    from autoft.autotrain.plan import make_plan

    b = load_data(shared_data / "go_emotions")
    rec = Recommendation(model={"id": "m"}, technique="full", task="classification", class_weights="balanced",
                         metric="macro_f1", search_space={"learning_rate": [1e-5, 1e-4]})
    plan = make_plan(rec, RunOptions(max_steps=50), b, task="classification", device="cpu")
    assert plan.trial.class_weights == tuple(imbalance.class_weights(b, "balanced"))
    assert (plan.metric, plan.higher_is_better) == ("macro_f1", True) and plan.search.metric == "macro_f1"
    rec = Recommendation(model={"id": "m"}, technique="full", task="classification", metric="loss",
                         metric_higher_is_better=False)
    plan = make_plan(rec, RunOptions(max_steps=50), b, task="classification", device="cpu")
    assert plan.trial.class_weights is None and (plan.metric, plan.higher_is_better) == ("loss", False)


def test_packing_reaches_generation_trials_only(shared_data):
    from autoft.advisor.recommend import Recommendation
    from autoft.autotrain.data import load_data
    from autoft.autotrain.options import RunOptions
    from autoft.autotrain.plan import make_plan
    from autoft.autotrain.trainer import Trial

    b = load_data(shared_data / "go_emotions")
    rec = Recommendation(model={"id": "m"}, technique="full", task="classification")
    assert not make_plan(rec, RunOptions(max_steps=50, packing=True), b, task="classification", device="cpu").trial.packing
    rec = Recommendation(model={"id": "m"}, technique="lora", task="generation")
    spec = make_plan(rec, RunOptions(max_steps=50, packing=True), b, task="generation", device="cpu").trial
    assert spec.packing
    seen = {}

    class Spy(Trial):
        def __init__(self, model, bundle, **kw):  # what from_spec hands the Trial, without loading a model
            seen.update(kw)

    Spy.from_spec(spec, b, {"learning_rate": 1e-4})
    assert seen["packing"] is True
    from autoft.autotrain.options import to_argv
    assert "--packing" in to_argv(RunOptions(packing=True))
