"""The step-time model (advisor/speed.py): FLOPs per token by technique, the saturation of small
micro-batches, the device table, and the ranking of published throughput figures."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from autoft.advisor import speed
from autoft.advisor.hardware import plan_hardware
from autoft.advisor.spec import GPU, Hardware, ModelSpec, TrainSetup

SPEC = ModelSpec(id="toy", model_type="llama", params=100_000_000, hidden_size=512, num_layers=8,
                 num_attention_heads=8, num_kv_heads=8, intermediate_size=2048, vocab_size=32000, max_positions=2048)
P_BLOCK = 4 * 512 * 512 + 3 * 512 * 2048  # q, k, v, o + gate, up, down
HEAD = 32000 * 512
PUBLISHED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "published_throughput.json"


def setup(**kw) -> TrainSetup:
    base = dict(technique="full", task="generation", batch_size=1, seq_len=256, precision="bf16")
    return TrainSetup(**{**base, **kw})


def test_full_fine_tuning_is_six_flops_per_weight_plus_attention():
    f = speed.flops_per_token(SPEC, setup(), 256)
    attn = 4 * 256 * 512
    assert f["forward"] == pytest.approx(8 * (2 * P_BLOCK + attn) + 2 * HEAD)
    assert f["backward"] == pytest.approx(8 * (4 * P_BLOCK + 2 * attn) + 4 * HEAD)
    assert f["recompute"] == 0
    assert f["total"] == pytest.approx(6 * (8 * P_BLOCK + HEAD) + 3 * 8 * attn)


def test_frozen_weights_skip_their_gradients_and_checkpointing_adds_a_forward():
    full = speed.flops_per_token(SPEC, setup(), 256)
    lora = speed.flops_per_token(SPEC, setup(technique="lora"), 256)
    # LoRA: input gradients only through the frozen base (2 per weight instead of 4), plus the
    # adapters' own (A and B gradients, their input gradients: 4 per adapter weight)
    adapters = 8 * 16 * (4 * 1024 + 3 * (512 + 2048))
    assert full["backward"] - lora["backward"] == pytest.approx(8 * 2 * P_BLOCK + 2 * HEAD - 4 * adapters)
    ck = speed.flops_per_token(SPEC, setup(technique="lora", gradient_checkpointing=True), 256)
    assert ck["recompute"] == pytest.approx(8 * (2 * P_BLOCK + 4 * 256 * 512))
    assert ck["total"] == pytest.approx(lora["total"] + ck["recompute"])
    assert ck["total"] / lora["total"] > 1.3  # a third more than full's 6N would be 1.33 at most
    # freeze: nothing below the lowest trainable block runs backward
    fr = speed.flops_per_token(SPEC, setup(technique="freeze", freeze_layers=6), 256)
    assert fr["backward"] == pytest.approx(2 * (4 * P_BLOCK + 2 * 4 * 256 * 512) + 2 * HEAD)
    # classification heads run on one token: no per-token head
    cls = speed.flops_per_token(SPEC, setup(task="classification"), 256)
    assert full["total"] - cls["total"] == pytest.approx(6 * HEAD)


def test_small_micro_batches_leave_the_gpu_waiting_on_the_host():
    dev = speed.device_throughput(plan_hardware("A100-80GB"), "bf16")
    eps = {b: speed.step_time(SPEC, setup(batch_size=b), 1, 64, dev).examples_per_s for b in (1, 2, 1024, 2048)}
    assert eps[2] / eps[1] > 1.8  # launch-bound: twice the examples for about the same time
    assert eps[2048] / eps[1024] < 1.1  # compute-bound: more examples, proportionally more time
    st1 = speed.step_time(SPEC, setup(batch_size=1), 1, 64, dev)
    big = speed.step_time(SPEC, setup(batch_size=2048), 1, 64, dev)
    assert st1.bound == "host" and big.bound == "compute"
    assert st1.utilisation < 0.01 < 0.3 < big.utilisation <= dev.efficiency
    knee = speed.saturation_tokens(SPEC, setup(), dev, 64)
    assert 64 < knee < 2048 * 64  # the knee lies between the two


def test_qlora_pays_for_dequantising_and_accumulation_multiplies_the_step():
    dev = speed.device_throughput(plan_hardware("L4"), "bf16")
    lora = speed.step_time(SPEC, setup(technique="lora", batch_size=4), 1, 256, dev)
    qlora = speed.step_time(SPEC, setup(technique="qlora", batch_size=4), 1, 256, dev)
    assert qlora.dequant_s > 0 and qlora.step_s > lora.step_s and lora.dequant_s == 0
    four = speed.step_time(SPEC, setup(technique="lora", batch_size=4), 4, 256, dev)
    assert four.step_s == pytest.approx(4 * lora.micro_batch_s + lora.optimizer_s)
    assert four.examples_per_s == pytest.approx(16 / four.step_s)


def test_device_table_precisions_and_unknown_gpus():
    t4 = speed.device_throughput(plan_hardware("T4"), "bf16")  # no bf16: the fp16 tensor peak
    assert t4.peak_flops == 65e12 and t4.efficiency == speed.CONSTANTS.mfu
    assert speed.device_throughput(plan_hardware("T4"), "fp32").peak_flops == 8.1e12
    assert speed.device_throughput(plan_hardware("H100-80GB"), "bf16").peak_flops == 989e12
    assert "Ada whitepaper" in speed.device_throughput(plan_hardware("RTX-4090"), "bf16").describe()
    odd = Hardware(kind="gpu", gpus=[GPU(name="GPU (24.0 GiB)", memory_bytes=24 << 30)])
    assert speed.device_throughput(odd, "bf16") is None and speed.predict(SPEC, setup(), 1, odd) is None
    cpu = speed.device_throughput(Hardware(kind="cpu", cpu_cores=4), "fp32")
    assert cpu.peak_flops == 4 * speed.CONSTANTS.cpu_gflops_per_core * 1e9 and "probe" in cpu.describe()


def test_predict_uses_the_data_mean_length_and_says_so():
    hw = plan_hardware("A100-40GB")
    known = speed.predict(SPEC, setup(seq_len=512), 4, hw, mean_tokens=100, data_size=1000)
    unknown = speed.predict(SPEC, setup(seq_len=512), 4, hw, data_size=1000)
    long = speed.predict(SPEC, setup(seq_len=512), 4, hw, mean_tokens=5000)
    assert known.tokens_per_example == 100 and "mean length, 100 tokens" in known.tokens_assumed
    assert unknown.tokens_per_example == 512 and "unknown" in unknown.tokens_assumed
    assert long.tokens_per_example == 512 and "capped" in long.tokens_assumed and long.epoch_s is None
    assert known.examples_per_s > unknown.examples_per_s
    assert known.epoch_s == pytest.approx(math.ceil(1000 / 4) * known.step_s)
    two = speed.predict(SPEC, setup(seq_len=512), 4, hw, mean_tokens=100, data_size=1000, gpus=2)
    assert two.examples_per_s == pytest.approx(2 * known.examples_per_s)
    assert set(known.to_dict()) >= {"examples_per_s", "step_s", "epoch_s", "assumption", "tokens_assumed"}


def test_published_settings_are_ranked_as_measured():
    """Per source and model, every pair of published settings is ordered as measured (LitGPT's
    micro-batches 1-4, ms-swift's checkpointing on/off)."""
    data = json.loads(PUBLISHED.read_text())
    groups: dict = {}
    for row in data["rows"]:
        if row["use"] == "check":
            continue
        spec = ModelSpec(id=row["model"], family="decoder", **data["models"][row["model"]])
        b, t = row["batch_size"], row["tokens_per_micro_batch"] / row["batch_size"]
        s = TrainSetup(technique=row["technique"], task="generation", batch_size=b, seq_len=max(8, math.ceil(t)),
                       precision="bf16", gradient_checkpointing=row["gradient_checkpointing"],
                       lora_rank=row["lora_rank"], lora_targets=row["lora_targets"])
        st = speed.step_time(spec, s, 1, t, speed.device_throughput(plan_hardware(row["gpu"]), "bf16"))
        (what, value), = row["measured"].items()
        measured_eps = b / value if what == "seconds_per_micro_batch" else value
        groups.setdefault((row["source"][:12], row["model"], row["technique"]), []).append(
            (b / st.micro_batch_s, measured_eps))
    pairs = [(a, b) for g in groups.values() for a, b in itertools.combinations(g, 2)]
    assert len(pairs) >= 8
    assert all((a[0] - b[0]) * (a[1] - b[1]) > 0 for a, b in pairs)


def test_durations_read_well():
    assert speed.fmt_duration(40) == "40 s" and speed.fmt_duration(330) == "5.5 min" and speed.fmt_duration(7200) == "2.0 h"
    assert replace(speed.CONSTANTS, mfu=0.5).mfu == 0.5
