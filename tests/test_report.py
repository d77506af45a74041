"""The Markdown report: the search table shows what decided each promotion (validation loss next
to the metric) and only the knobs the technique uses."""
from __future__ import annotations

from autoft.autotrain.report import write_report
from autoft.autotrain.schedule import sample_configs


def _records(technique: str) -> list[dict]:
    cfgs = sample_configs({"learning_rate": [1e-5, 1e-4], "weight_decay": [0.0, 0.1]}, 3, technique=technique)
    recs = [{"trial": i, "rung": 0, "steps": 5, "config": c, "metric": 0.5, "eval": {"loss": 0.7 - 0.01 * i},
             "status": "ok", "seconds": 1.0} for i, c in enumerate(cfgs)]
    recs.append({"trial": 2, "rung": 1, "steps": 15, "config": cfgs[2], "metric": 0.8, "eval": {"loss": 0.41},
                 "status": "ok", "seconds": 2.0})
    return recs


def _report(tmp_path, technique: str, promote_by: str = "loss", metric: str = "accuracy") -> str:
    records = _records(technique)
    search = {"configs": [r["config"] for r in records[:3]], "best_trial": 2, "best_metric": 0.8,
              "rungs": [{"n_trials": 3, "budget_steps": 5}, {"n_trials": 1, "budget_steps": 15}],
              "promote_by": promote_by}
    metrics = {"metric": metric, "test": {metric: 0.8}, "baseline": {metric: 0.5}, "best_trial": 2,
               "config": records[-1]["config"]}
    history = {"train": [{"step": 1, "loss": 0.7}], "validation": [{"step": 1, "loss": 0.6, metric: 0.7}]}
    path = write_report(tmp_path, rec={"technique": technique}, metrics=metrics, records=records, history=history,
                        search=search, command="autoft run")
    return path.read_text(encoding="utf-8")


def test_search_table_shows_validation_loss_and_the_promotion_rule(tmp_path):
    text = _report(tmp_path, "full")
    assert "| validation loss |" in text and "| 0.41 |" in text
    assert "moved up a rung by validation loss" in text
    assert "lora_r" not in text  # a full fine-tune has no LoRA rank


def test_lora_report_lists_the_rank_and_metric_promotion(tmp_path):
    text = _report(tmp_path, "lora", promote_by="metric")
    assert "lora_r" in text and "moved up a rung and the winner was chosen by validation accuracy" in text


def test_multilabel_report_and_card_show_labels_threshold_and_baseline(tmp_path):
    from autoft.autotrain.card import card_text

    test = {"micro_f1": 0.61, "macro_f1": 0.42, "subset_accuracy": 0.5, "threshold": 0.3, "loss": 0.1,
            "per_label": {"joy": {"precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 30}}}
    metrics = {"task": "classification", "metric": "macro_f1", "test": test,
               "baseline": {"micro_f1": 0.0, "macro_f1": 0.0}, "config": {"learning_rate": 1e-4}}
    text = write_report(tmp_path, rec={"technique": "full"}, metrics=metrics, records=[],
                        history={"train": [], "validation": []}, search=None, command="autoft run").read_text()
    assert "| micro_f1 | 0.61 | 0 |" in text and "### Per label (test)" in text and "| joy |" in text
    assert "at least 0.3 (tuned on validation)" in text
    card = card_text({"model": {"id": "m"}, "technique": "full"}, metrics, "emotions", "autoft run")
    assert "each label's majority value" in card and "| micro_f1 | 0.61 |" in card and "sigmoid" in card


def test_report_shows_the_time_plan_predicted_replanned_and_actual(tmp_path):
    from autoft.autotrain.budget import BudgetSettings, Measured, plan_budget, replan

    m = Measured(step_s=1.0, eval_s_per_example=0.01)
    plan = plan_budget(1800, m, BudgetSettings(final_steps_wanted=800, n_val=100, n_test=100), elapsed_s=30.0)
    plan = replan(plan, Measured(step_s=2.0, eval_s_per_example=0.01), elapsed_s=1000.0, rungs_done=len(plan.rungs))
    plan.record("final", 640.0)
    metrics = {"metric": "accuracy", "test": {"accuracy": 0.8}, "budget": plan.to_dict()}
    text = write_report(tmp_path, rec={"technique": "full"}, metrics=metrics, records=[], history={},
                        search=None, command="autoft run").read_text(encoding="utf-8")
    assert "## Time (budget 1800 s)" in text and f"Plan: {plan.planned_text}." in text
    # the plan the user was shown before training, and the last re-plan (which says what was left)
    assert plan.planned_text != plan.text() and f"Last re-plan (1 in all): {plan.text()}." in text
    assert "| phase | predicted (s) | re-planned (s) | actual (s) |" in text
    assert "| before the plan (probe, loading) | 30 | 1000 | 30 |" in text
    assert "| saving |" in text and "(after this report)" in text
