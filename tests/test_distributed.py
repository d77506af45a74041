"""Several training processes (issue 15): the per-GPU memory of DDP and FSDP, the advisor's
strategy, the plan, and the distributed final run on the CPU (gloo): two processes train what one
process trains with the same effective batch, FSDP's saved model is what rank 0 holds, a killed
process ends the run with one line and no process left behind, and --resume continues it.
Tests marked `gpu` need two CUDA devices."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autoft.advisor import memory, sharding
from autoft.advisor.question import Question
from autoft.advisor.recommend import Recommendation, advise
from autoft.advisor.spec import ModelSpec, TrainSetup
from autoft.advisor.units import GIB
from autoft.errors import AutoftError

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parent.parent
LLAMA_8B = ModelSpec(id="llama-3.1-8b", model_type="llama", params=8_030_261_248, hidden_size=4096, num_layers=32,
                     num_attention_heads=32, num_kv_heads=8, intermediate_size=14336, vocab_size=128256,
                     max_positions=131072)


# -- the per-GPU memory arithmetic (pure) ---------------------------------------------------------

def test_one_process_is_the_one_gpu_estimate():
    s = TrainSetup(technique="full", batch_size=2, seq_len=1024, gradient_checkpointing=True)
    assert sharding.per_gpu_estimate(LLAMA_8B, s, 1, "fsdp") == memory.estimate(LLAMA_8B, s)


def test_ddp_is_a_full_replica_plus_communication_buffers():
    s = TrainSetup(technique="lora", batch_size=2, seq_len=1024)
    one, ddp = memory.estimate(LLAMA_8B, s).breakdown_bytes, sharding.per_gpu_estimate(LLAMA_8B, s, 4, "ddp").breakdown_bytes
    for term in ("frozen_weights", "trainable_weights", "gradients", "optimizer_states", "activations"):
        assert ddp[term] == one[term]
    assert ddp["gradient_buckets"] == 0  # gradient_as_bucket_view: the gradients are the buckets
    assert ddp["communication_buffers"] == int(sharding.SHARDING.comm_buffer_bytes)
    copy = sharding.per_gpu_estimate(LLAMA_8B, s, 4, "ddp", sharding=sharding.ShardingConstants(ddp_bucket_view=False))
    assert copy.breakdown_bytes["gradient_buckets"] == one["gradients"]  # torch's default: a second copy


@pytest.mark.parametrize("world", [2, 4, 8])
def test_fsdp_divides_the_model_states_and_adds_the_gathered_units(world):
    s = TrainSetup(technique="full", batch_size=1, seq_len=2048, gradient_checkpointing=True, precision="bf16")
    one = memory.estimate(LLAMA_8B, s).breakdown_bytes
    bd = sharding.per_gpu_estimate(LLAMA_8B, s, world, "fsdp").breakdown_bytes
    P = memory.effective_params(LLAMA_8B, s)
    # fp32 masters (no per-GPU autocast copy: FSDP gathers in bf16), fp32 grads, AdamW: 16 B / param / N
    assert bd["trainable_weights"] == pytest.approx(4 * P / world, rel=1e-6)
    assert bd["gradients"] == pytest.approx(one["gradients"] / world, abs=1)
    assert bd["optimizer_states"] == pytest.approx(one["optimizer_states"] / world, abs=1)
    assert bd["activations"] == one["activations"] and bd["logits_and_loss"] == one["logits_and_loss"]
    # the untied embedding / output layer (525M) is the largest unit; one 218M block is prefetched;
    # gathered in bf16; its gradient in bf16 plus the fp32 copy that is reduce-scattered
    emb, block = 128256 * 4096, sum(i * o for _, i, o in memory.layer_linears(LLAMA_8B)) + 2 * 4096
    root = P - 32 * block - 2 * emb
    assert bd["gathered_units"] == pytest.approx((emb + block + root) * 2, rel=1e-6)
    assert bd["unit_gradients"] == pytest.approx(emb * (2 + 4), rel=1e-6)


def test_fsdp_per_gpu_peak_falls_with_more_gpus_and_beats_ddp():
    s = TrainSetup(technique="full", batch_size=1, seq_len=2048, gradient_checkpointing=True)
    peaks = [sharding.per_gpu_estimate(LLAMA_8B, s, n, "fsdp").peak_bytes for n in (2, 4, 8)]
    assert peaks[0] > peaks[1] > peaks[2]
    assert peaks[0] < sharding.per_gpu_estimate(LLAMA_8B, s, 2, "ddp").peak_bytes
    # the sharded states shrink as 1/N; what stays per GPU (activations, units) does not
    assert peaks[1] - peaks[2] < peaks[0] - peaks[1]


def test_max_batch_per_gpu_is_the_largest_that_fits():
    s = TrainSetup(technique="lora", batch_size=1, seq_len=512, gradient_checkpointing=True)
    mem = 24 * GIB
    b = sharding.max_batch_size(LLAMA_8B, s, 4, "fsdp", mem)
    est = lambda n: sharding.per_gpu_estimate(LLAMA_8B, replace(s, batch_size=n), 4, "fsdp").peak_bytes  # noqa: E731
    assert b >= 1 and est(b) <= 0.9 * mem < est(b + 1)
    assert b >= sharding.max_batch_size(LLAMA_8B, s, 4, "ddp", mem)


def test_fsdp_refuses_qlora_and_fp16_on_gpus():
    assert "QLoRA" in sharding.fsdp_refusal(TrainSetup(technique="qlora"))
    assert "fp16" in sharding.fsdp_refusal(TrainSetup(technique="full", precision="fp16"))
    assert sharding.fsdp_refusal(TrainSetup(technique="lora", precision="bf16")) is None


# -- the advisor -----------------------------------------------------------------------------------

def _advise(gpus: int, memory: str = "24GiB", **kw) -> Recommendation:
    q = Question(model="meta-llama/Llama-3.1-8B", task="generation", gpu_memory=memory, gpus=gpus, seq_len=2048,
                 data_size=20000, **kw)
    return advise(q)


def test_advisor_plans_ddp_when_a_replica_fits_and_accumulation_counts_the_processes():
    one, four = _advise(1, technique="qlora"), _advise(4, technique="qlora")
    assert one.strategy is None and one.world_size == 1
    assert four.strategy == "ddp" and four.world_size == 4
    assert "DIST-001" in [r["rule"] for r in four.reasons]
    # the effective batch is micro-batch x accumulation x processes, the same target as on one GPU
    assert four.effective_batch_size == four.batch_size * four.gradient_accumulation_steps * 4
    assert four.gradient_accumulation_steps < one.gradient_accumulation_steps
    assert four.estimate["breakdown_gib"]["communication_buffers"] > 0


def test_advisor_plans_fsdp_when_only_the_sharded_plan_fits():
    rec = _advise(4, "80GiB", technique="full")  # a replica: ~140 GiB; sharded over 4: ~43 GiB
    assert rec.strategy == "fsdp" and rec.fits
    why = next(r for r in rec.reasons if r["rule"] == "DIST-002")
    assert "GiB per GPU" in why["because"] and why["facts"]["world_size"] == 4
    assert rec.estimate["peak_gib"] <= 0.9 * 80 and "gathered_units" in rec.estimate["breakdown_gib"]
    with pytest.raises(AutoftError, match="more than the"):
        _advise(4, "80GiB", technique="full", strategy="ddp")  # refused, not planned


def test_qlora_with_fsdp_is_refused_with_the_reason():
    with pytest.raises(AutoftError, match="QLoRA with FSDP is not supported"):
        _advise(2, technique="qlora", strategy="fsdp")


def test_cpu_processes_share_the_ram():
    q = dict(model="sentence-transformers/all-MiniLM-L6-v2", task="classification", gpu="cpu", num_labels=2)
    one, two = advise(Question(**q)), advise(Question(processes=2, **q))
    assert two.world_size == 2 and two.memory_gib == pytest.approx(one.memory_gib / 2, rel=0.01)


# -- the plan --------------------------------------------------------------------------------------

class _Bundle:
    task = "classification"
    label_names = ["a", "b"]
    splits = {"train": [{"text": "x", "label": "a"}] * 64}


def _plan(rec: dict, **opts):
    from autoft.autotrain.options import RunOptions
    from autoft.autotrain.plan import make_plan

    return make_plan(Recommendation.from_dict(rec), RunOptions(**opts), _Bundle(), task="classification",
                     device="cpu")


def test_plan_keeps_the_effective_batch_and_gives_each_process_its_share():
    rec = {"model": {"id": "m"}, "technique": "lora", "batch_size": 4, "gradient_accumulation_steps": 2,
           "world_size": 2, "strategy": "ddp", "reasons": [{"rule": "DIST-001", "because": "fits"}]}
    plan = _plan(rec, question={"gpu": "cpu", "processes": 2}, max_steps=10)
    assert plan.dist.world == 2 and plan.dist.strategy == "ddp" and plan.dist.reason == "fits"
    assert plan.trial.effective_batch == 16 and plan.trial.grad_accum == 4  # the one-process equivalent
    assert plan.dist.per_process(plan.trial).grad_accum == 2
    # a recommendation made for one process keeps its effective batch on two
    single = _plan({**rec, "world_size": 1, "gradient_accumulation_steps": 4}, question={"gpu": "cpu", "processes": 2})
    assert single.trial.effective_batch == 16
    assert _plan(rec, question={"gpu": "cpu"}).dist is None


def test_plan_skips_the_search_for_fsdp_and_refuses_merge():
    rec = {"model": {"id": "m"}, "technique": "full", "batch_size": 2, "world_size": 4, "strategy": "fsdp"}
    plan = _plan(rec, question={"gpu": "cpu", "processes": 4}, max_steps=50)
    assert plan.search is None and "FSDP" in plan.skip_reason
    with pytest.raises(AutoftError, match="--merge with FSDP"):
        _plan({**rec, "technique": "lora"}, question={"gpu": "cpu", "processes": 4}, merge=True)


@pytest.mark.parametrize("kw,needle", [
    ({"question": {"nnodes": 2}}, "--rdzv-endpoint"),
    ({"question": {"nnodes": 2}, "rdzv_endpoint": "host:1", "node_rank": 2}, "--node-rank 2"),
    ({"rdzv_endpoint": "hostonly"}, "no port"),
])
def test_bad_distributed_options_are_one_line_errors(kw, needle):
    from autoft.autotrain.options import RunOptions

    with pytest.raises(AutoftError, match=needle):
        RunOptions(**kw)


def test_estimate_cli_shows_the_per_gpu_breakdown(capsys):
    from autoft.cli import main

    assert main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--technique", "full", "--gradient-checkpointing",
                 "--batch-size", "1", "--seq-len", "2048", "--gpus", "8", "--strategy", "fsdp", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gpus"] == 8 and d["strategy"] == "fsdp"
    assert {"gathered_units", "unit_gradients", "communication_buffers"} <= set(d["breakdown_gib"])
    assert main(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--technique", "qlora", "--batch-size", "1",
                 "--seq-len", "512", "--gpus", "2", "--strategy", "fsdp"]) == 2
    assert "QLoRA with FSDP" in capsys.readouterr().err


# -- how a failure is reported ---------------------------------------------------------------------

class _F:
    def __init__(self, exitcode, message="", timestamp=0):
        self.exitcode, self.message, self.timestamp = exitcode, message, timestamp

    def signal_name(self):
        return signal.Signals(-self.exitcode).name


def test_failure_line_names_the_process_that_caused_it():
    from autoft.autotrain.launch import PEER, failure_line

    killed = {0: _F(-signal.SIGTERM), 1: _F(-signal.SIGKILL, timestamp=5), 2: _F(1, PEER + "RuntimeError: closed")}
    assert failure_line(killed, 3) == "training process 1 of 3 was killed (SIGKILL)"
    failed = {0: _F(1, PEER + "DistBackendError: Connection closed by peer", 1),
              1: _F(1, {"message": "out of memory at micro-batch 8 on rank 1; pass --batch-size 4", "extraInfo": {}}, 2)}
    assert failure_line(failed, 2) == "training process 1 of 2 failed: out of memory at micro-batch 8 on rank 1; pass --batch-size 4"


def test_worker_marks_errors_caused_by_another_process():
    from autoft.autotrain.dist_worker import one_line
    from autoft.autotrain.launch import PEER

    assert one_line(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234")).startswith(PEER)
    assert one_line(AutoftError("bad data", "fix it")) == "bad data; fix it."
    assert one_line(ValueError("x\ny")) == "ValueError: x"


# -- the distributed final run on the CPU (gloo) ---------------------------------------------------

def _generation_data(tmp: Path) -> tuple[Path, str]:
    from tiny_models import build_tiny_llama, easy_generation, small_tokenizer

    model = build_tiny_llama(tmp / "llama", small_tokenizer())
    data = tmp / "gen.jsonl"
    with open(data, "w") as f:
        for r in easy_generation(24, 8).splits["train"]:
            f.write(json.dumps({"instruction": r["messages"][0]["content"], "input": "",
                                "output": r["messages"][1]["content"]}) + "\n")
    return data, model


def _rec(model: str, accum: int, world: int, strategy: str | None = None) -> dict:
    return {"model": {"id": model}, "technique": "lora", "batch_size": 2, "gradient_accumulation_steps": accum,
            "seq_len": 32, "precision": "fp32", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "world_size": world,
            "strategy": strategy, "search_space": {"learning_rate": [1e-3, 1e-2]}}


@pytest.mark.slow
def test_two_cpu_processes_train_what_one_process_trains(tmp_path):
    """DDP over 2 processes (micro-batch 2, accumulation 1) against one process (micro-batch 2,
    accumulation 2): the same examples per step in the same micro-batches, so the loss curve and
    the saved adapter agree to float rounding (tolerance: 1e-5 relative on losses, 1e-5 absolute
    on weights of size ~0.1)."""
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    from autoft.autotrain.pipeline import RunOptions, run

    data, model = _generation_data(tmp_path)
    common = dict(data=str(data), no_search=True, max_steps=6, eval_every=3)
    one = run(RunOptions(recommendation=_rec(model, 2, 1), output=str(tmp_path / "one"), question={"gpu": "cpu"},
                         **common))
    two = run(RunOptions(recommendation=_rec(model, 1, 2, "ddp"), output=str(tmp_path / "two"),
                         question={"gpu": "cpu", "processes": 2}, **common))
    h1, h2 = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert [h["step"] for h in h2["train"]] == [h["step"] for h in h1["train"]] == [3, 6]
    assert [h["loss"] for h in h2["train"]] == pytest.approx([h["loss"] for h in h1["train"]], rel=1e-5)
    assert [h["loss"] for h in h2["validation"]] == pytest.approx([h["loss"] for h in h1["validation"]], rel=1e-5)
    assert two.test["eval_loss"] == pytest.approx(one.test["eval_loss"], rel=1e-5)
    m = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m["processes"] == 2 and m["strategy"] == "ddp" and m["effective_batch"] == 4 and m["grad_accum"] == 1
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert not (tmp_path / "two" / "distributed").exists() and not (tmp_path / "two" / "final-best").exists()


@pytest.mark.slow
def test_fsdp_saved_model_is_what_rank_0_holds(tmp_path, strategy="fsdp"):
    """FSDP2 (fully_shard) on 2 CPU processes: the adapter rank 0 writes equals the full weights
    every process holds, gathered from the shards, and both processes logged the same
    (all-reduced) losses and evaluated the same. (DDP: test_two_cpu_processes_...)"""
    pytest.importorskip("torch")
    from safetensors.torch import load_file
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _, model = _generation_data(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="t", rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1", max_restarts=0, monitor_interval=0.2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    elastic_launch(config, sys.executable)(str(ROOT / "tests" / "dist_scripts" / "train_and_dump.py"), model,
                                           strategy, str(out))
    saved = load_file(str(out / "model" / "adapter_model.safetensors"))
    held = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    lora = {k: v for k, v in held[0].items() if "lora_" in k}
    assert len(saved) == len(lora) > 0
    for k, v in lora.items():  # peft's adapter keys drop the adapter name ("default")
        assert (saved[k.replace(".default", "")] == v).all()
        assert (held[1][k] == v).all()
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [h["loss"] for h in logs[0]["history"]] == [h["loss"] for h in logs[1]["history"]]
    assert logs[0]["eval"] == logs[1]["eval"]
    # the checkpoint is in the one-process format: a plain Trial continues from it
    from autoft.autotrain.trainer import Trial
    from tiny_models import easy_generation

    t = Trial.load_checkpoint(out / "ckpt", easy_generation(16, 4))
    assert t.steps_done == 3
    restored = dict(t.model.named_parameters())
    assert all((restored[k] == v).all() for k, v in lora.items())
    t.train(1)
    t.close()


def _descendants(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids += [int(d.name), *_descendants(int(d.name))]
    return kids


def _rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_one_line_and_resume_continues(tmp_path):
    """SIGKILL to rank 1 in the middle of the final run: the launcher stops rank 0, the run exits
    with one line naming rank 1, no process is left (checked by pid); --resume continues from the
    last best checkpoint and finishes."""
    pytest.importorskip("torch")
    data, model = _generation_data(tmp_path)
    out = tmp_path / "out"
    args = ["run", "--data", str(data), "--model", model, "--technique", "lora", "--seq-len", "32", "--batch-size",
            "2", "--no-search", "--max-steps", "60", "--eval-every", "5", "--gpu", "cpu", "--processes", "2",
            "--output", str(out), "--yes"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "autoft", *args], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: dict[int, int] = {}
    try:
        state = out / "final-best" / "final-state.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not state.is_file():
            time.sleep(0.2)  # until the first best checkpoint is complete
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
        workers = {r: p for p in _descendants(proc.pid) if (r := _rank(p)) is not None}
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        rc = proc.wait(timeout=120)  # no hang: the launcher stops rank 0
        err = proc.stderr.read().strip().splitlines()
        assert rc == 2
        assert err[-1].startswith("autoft: error: training process 1 of 2 was killed (SIGKILL)")
        assert "--resume" in err[-1]
        assert not any(line.startswith(("W1", "E1", "Traceback")) for line in err)  # the launcher's logs stay quiet
        time.sleep(0.5)
        assert not [p for p in workers.values() if _alive(p)]
    finally:  # whatever happened: every process this test started is stopped, by its id
        for p in [proc.pid, *workers.values()]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        proc.wait(timeout=30)
    best = json.loads(state.read_text())["best_step"]
    assert 0 < best < 60
    from autoft.autotrain.pipeline import RunOptions, run

    steps: list = []
    run(RunOptions(resume=str(out)), progress=lambda ev: steps.append(ev["step"]) if ev["kind"] == "step" else None)
    assert steps[0] == best + 5 and steps[-1] == 60  # from the last best checkpoint, not from step 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 2 and m["planned_steps"] == 60
    assert (out / "adapter_model.safetensors").is_file() and not (out / "final-best").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.mark.slow
def test_two_machines_meet_at_the_rendezvous_endpoint(tmp_path):
    """--nnodes 2 with one process each, both "machines" on this one: machine 0 advises, plans and
    writes; machine 1 (--node-rank 1) only starts its process, which reads machine 0's plan from
    the shared output folder. The run trains as 2 processes and machine 0 writes the outputs."""
    pytest.importorskip("torch")
    data, model = _generation_data(tmp_path)
    out = tmp_path / "out"
    common = ["run", "--data", str(data), "--model", model, "--technique", "lora", "--seq-len", "32", "--batch-size",
              "2", "--no-search", "--max-steps", "4", "--eval-every", "2", "--gpu", "cpu", "--processes", "1",
              "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--output", str(out), "--yes"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "autoft", *common, "--node-rank", str(r)], cwd=str(ROOT), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        rcs = [p.wait(timeout=600) for p in procs]
        errs = [p.stderr.read() for p in procs]
        assert rcs == [0, 0], errs
        assert "waiting for machine 0's final-run plan" in errs[1]
        assert "machine 1: its training processes finished" in errs[1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 2 and m["effective_batch"] == m["batch_size"] * m["grad_accum"] * 2
    assert (out / "adapter_model.safetensors").is_file()


# -- two CUDA devices (skipped here) ---------------------------------------------------------------

def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_train_what_one_gpu_trains(tmp_path, strategy):
    """NCCL on 2 GPUs against 1 GPU with the same effective batch (bf16 autocast: 2% tolerance)."""
    from autoft.autotrain.pipeline import RunOptions, run

    data, model = _generation_data(tmp_path)
    common = dict(data=str(data), no_search=True, max_steps=6, eval_every=3)
    rec1, rec2 = _rec(model, 2, 1), _rec(model, 1, 2, strategy)
    for r in (rec1, rec2):
        r["precision"] = "bf16"
    one = run(RunOptions(recommendation=rec1, output=str(tmp_path / "one"), question={"gpus": 1}, **common))
    two = run(RunOptions(recommendation=rec2, output=str(tmp_path / "two"), question={"gpus": 2}, **common))
    h1, h2 = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert [h["loss"] for h in h2["train"]] == pytest.approx([h["loss"] for h in h1["train"]], rel=0.02)
    assert two.test["eval_loss"] == pytest.approx(one.test["eval_loss"], rel=0.02)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
