"""The memory tracer (autotrain/trace.py): autoft's own training step on fake tensors, counted by kind.

Models are built from their config only (no weights), so each trace takes about a second on one
core. The analytic estimator is held to the trace where it meets issue 16's goal (|error| <= 8%,
never under by more than 3%): BERT-shaped encoders for full and LoRA. Elsewhere the known gap is
asserted as it stands, so that a change making it wider fails (see README, known limits)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from autoft.advisor.catalog import count_params, resolve_model  # noqa: E402
from autoft.advisor.memory import estimate, predicted  # noqa: E402
from autoft.advisor.spec import TrainSetup  # noqa: E402
from autoft.autotrain.trace import trace_memory  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

TECHNIQUES = ("full", "freeze", "lora", "qlora")
# A small Llama-architecture decoder, as tests/tiny_models.py builds them, but wide enough that
# the CUDA allocator's 512-byte rounding (emulated by the tracer) is a small share of each tensor.
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
              "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
              "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("tiny-llama") / "config.json"
    p.write_text(json.dumps(TINY_LLAMA))
    return str(p)


def two_layer(model_id: str):
    """A catalog architecture cut to 2 layers, with its exact parameter count (the catalog's is rounded)."""
    spec = replace(resolve_model(model_id), num_layers=2)
    return replace(spec, params=count_params(spec))


def setup(technique: str, task: str = "generation", **kw) -> TrainSetup:
    base = {"batch_size": 2, "seq_len": 64} if task == "generation" else {"batch_size": 4, "seq_len": 64}
    return TrainSetup(technique=technique, task=task, precision="bf16", **{**base, **kw})


@pytest.fixture(scope="module")
def llama_traces(tiny_llama):
    return {t: trace_memory(tiny_llama, setup(t)) for t in TECHNIQUES}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_every_technique_traces_and_its_kinds_add_up(llama_traces, technique):
    r = llama_traces[technique]
    assert r.peak_bytes > 0 and sum(r.by_kind.values()) == r.peak_bytes
    assert r.peak_phase in ("forward", "backward", "optimizer")
    assert r.trainable_params > 0 and r.params > 0
    # AdamW keeps two fp32 moments per trainable weight through the step (warm: a steady-state step);
    # fused AdamW's per-parameter step counters and the 512-byte rounding add a little
    assert r.by_kind["optimizer_states"] == pytest.approx(8 * r.trainable_params, rel=0.05)
    # an accumulating step: earlier micro-batches' gradients (fp32 masters) exist throughout
    assert r.by_kind["gradients"] == pytest.approx(4 * r.trainable_params, rel=0.05)


def test_techniques_train_what_they_say(llama_traces):
    full, freeze, lora, qlora = (llama_traces[t] for t in TECHNIQUES)
    assert full.trainable_params == full.params  # every weight trains
    assert 0 < freeze.trainable_params < full.trainable_params
    assert lora.trainable_params < 0.1 * full.trainable_params
    assert qlora.trainable_params == lora.trainable_params  # the same adapters on a 4-bit base
    # weights: fp32 masters (full) > a bf16 base (lora) > NF4 stand-ins for the block linears (qlora)
    assert full.by_kind["weights"] > lora.by_kind["weights"] > qlora.by_kind["weights"]
    assert any("qlora" in n and "stood in" in n for n in qlora.notes)  # the stand-in is said


def test_checkpointing_keeps_fewer_activations(tiny_llama):
    off = trace_memory(tiny_llama, setup("full", batch_size=4, seq_len=128))
    on = trace_memory(tiny_llama, setup("full", batch_size=4, seq_len=128, gradient_checkpointing=True))
    fwd = lambda r: r.phase_peaks["forward"]["activations"]  # noqa: E731
    assert fwd(on) < fwd(off)


def test_no_accumulation_has_no_gradients_in_the_forward(tiny_llama):
    r = trace_memory(tiny_llama, setup("full", grad_accum=1))
    assert r.phase_peaks["forward"]["gradients"] == 0
    acc = trace_memory(tiny_llama, setup("full"))
    assert acc.phase_peaks["forward"]["gradients"] > 0


# -- the analytic estimate held to the trace -------------------------------------------------------
def error(spec, s: TrainSetup) -> float:
    traced = trace_memory(spec, s).peak_bytes
    return (predicted(estimate(spec, s), "allocated") - traced) / traced


@pytest.mark.parametrize("technique", ["full", "lora"])
@pytest.mark.parametrize("ckpt", [False, True])
def test_encoder_estimate_meets_the_goal_for_full_and_lora(technique, ckpt):
    err = error(two_layer("google-bert/bert-base-uncased"), setup(technique, "classification", gradient_checkpointing=ckpt))
    assert -0.03 <= err <= 0.08


@pytest.mark.parametrize("technique", ["freeze", "qlora"])
def test_encoder_estimate_is_within_8_percent_for_freeze_and_qlora(technique):
    # the goal's "never under by more than 3%" is not met for freeze with checkpointing (about -3.5%)
    for ckpt in (False, True):
        err = error(two_layer("google-bert/bert-base-uncased"), setup(technique, "classification",
                                                                      gradient_checkpointing=ckpt))
        assert abs(err) <= 0.08


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_decoder_estimate_gap_is_bounded(technique):
    """Known gap, not the goal: on a decoder with a large vocabulary the estimator misses the
    step's loss and embedding-gradient temporaries (full -18%, freeze -10%, qlora -12%) and
    over-counts LoRA's activations (+16%). Asserted as bounded so that it cannot silently grow."""
    err = error(two_layer("HuggingFaceTB/SmolLM2-135M-Instruct"), setup(technique, batch_size=1, seq_len=128))
    assert abs(err) <= 0.25


def test_encoder_decoders_are_refused_in_one_line():
    spec = resolve_model("google/flan-t5-base")
    with pytest.raises(AutoftError, match="encoder-decoders"):
        trace_memory(spec, TrainSetup(technique="lora", task="summarization", batch_size=1, seq_len=64))


# -- autoft estimate --trace -------------------------------------------------------------------------
def test_cli_trace_json_puts_the_trace_beside_the_prediction(capsys, tiny_llama):
    from autoft.cli import main

    assert main(["estimate", "--model", tiny_llama, "--technique", "lora", "--batch-size", "2", "--seq-len", "64",
                 "--trace", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    t = d["trace"]
    assert [r["term"] for r in t["rows"]] == ["weights", "gradients", "optimizer states", "activations, logits"]
    direct = trace_memory(tiny_llama, TrainSetup(**d["setup"]))  # the same setup, traced directly
    assert t["traced_tensor_bytes"] == direct.peak_bytes == sum(r["traced_bytes"] for r in t["rows"])
    assert t["difference"] == pytest.approx((t["analytic_tensor_bytes"] - direct.peak_bytes) / direct.peak_bytes)
    # the prediction's tensor-level peak: everything but the CUDA context and the allocator margin
    gib = 1024**3
    gpu_only = d["breakdown_gib"]["cuda_context"] + d["breakdown_gib"]["allocator_margin"]
    assert t["analytic_tensor_bytes"] / gib == pytest.approx(d["peak_gib"] - gpu_only, abs=0.01)
    assert t["gpu_only_bytes"] / gib == pytest.approx(gpu_only, abs=0.01)


def test_cli_trace_text_prints_both_columns(capsys, tiny_llama):
    from autoft.cli import main

    assert main(["estimate", "--model", tiny_llama, "--technique", "qlora", "--batch-size", "2", "--seq-len", "64",
                 "--trace"]) == 0
    out = capsys.readouterr().out
    assert "traced on fake tensors in" in out and "predicted" in out and "traced" in out
    assert "tensors at the peak" in out and "CUDA context and allocator margin (not traced)" in out
    assert "trace note: qlora:" in out  # the NF4 stand-in is said


@pytest.mark.parametrize("extra, needle", [
    ([], "transformers cannot read the config"),  # a model type transformers does not know
    (["--gpus", "2"], "--trace traces one process"),
])
def test_cli_trace_errors_are_one_line(capsys, tmp_path, extra, needle):
    from autoft.cli import main

    folder = tmp_path / "strange"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_LLAMA, "model_type": "no-such-model",
                                                    "architectures": ["NoSuchForCausalLM"]}))
    assert main(["estimate", "--model", str(folder), "--technique", "lora", "--batch-size", "1", "--seq-len", "64",
                 "--trace", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoft: error: ") and needle in err[0]


def test_advise_verify_traces_the_recommended_setting(capsys):
    from autoft.cli import main

    assert main(["advise", "--model", "google-bert/bert-base-uncased", "--task", "classification", "--data-size", "500",
                 "--gpu", "T4", "--technique", "lora", "--batch-size", "2", "--seq-len", "64", "--verify", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    v = d["verify"]
    assert v["seconds"] > 0 and v["traced_tensor_bytes"] > 0
    assert d["technique"] == "lora" and d["batch_size"] == 2  # what was traced is what was recommended
    # the recommendation's own prediction, less the GPU-only terms, is the traced one's other column
    gpu_only = d["estimate"]["breakdown_gib"]["cuda_context"] + d["estimate"]["breakdown_gib"]["allocator_margin"]
    assert v["analytic_tensor_bytes"] / 1024**3 == pytest.approx(d["estimate"]["peak_gib"] - gpu_only, abs=0.01)
    assert abs(v["difference"]) <= 0.08  # a BERT-shaped LoRA plan: within issue 16's goal
