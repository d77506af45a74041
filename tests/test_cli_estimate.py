"""`autoft estimate` through the CLI entry point (autoft.cli.main)."""
from __future__ import annotations

import json

import pytest

from autoft.advisor.memory import TERMS
from autoft.cli import main

LLAMA2_7B_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}


@pytest.fixture()
def llama_config(tmp_path) -> str:
    p = tmp_path / "llama-2-7b" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(LLAMA2_7B_CONFIG))
    return str(p)


def run_json(capsys, *args) -> dict:
    assert main(["estimate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_documented_fields(capsys, llama_config):
    d = run_json(capsys, "--model", llama_config, "--technique", "qlora", "--batch-size", "4", "--seq-len", "512",
                 "--gpu-memory", "40GiB")
    assert set(TERMS) == set(d["breakdown_gib"])
    assert d["peak_gib"] == pytest.approx(sum(d["breakdown_gib"].values()), abs=0.01)
    assert d["setup"]["technique"] == "qlora" and d["setup"]["batch_size"] == 4
    assert d["setup"]["gradient_checkpointing"] is True  # k-bit preparation's default for qlora
    assert d["fits"] is True and d["gpu_memory_gib"] == pytest.approx(40.0)
    assert d["max_batch_size"] >= 4 and isinstance(d["notes"], list) and d["notes"]


def test_lora_7b_does_not_fit_a_t4_and_the_table_says_so(capsys, llama_config):
    assert main(["estimate", "--model", llama_config, "--technique", "lora", "--batch-size", "1", "--seq-len", "512",
                 "--gpu", "T4"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit on T4" in out and "GiB" in out
    for term in TERMS:
        assert term.replace("_", " ") in out
    d = run_json(capsys, "--model", llama_config, "--technique", "lora", "--batch-size", "1", "--seq-len", "512",
                 "--gpu", "T4")
    assert d["fits"] is False and d["headroom_gib"] < 0 and d["max_batch_size"] == 0


def test_flags_move_the_estimate_the_right_way(capsys, llama_config):
    base = ["--model", llama_config, "--technique", "lora", "--batch-size", "2", "--seq-len", "1024"]
    plain = run_json(capsys, *base)["peak_gib"]
    assert run_json(capsys, *base, "--gradient-checkpointing")["peak_gib"] < plain
    assert run_json(capsys, *base, "--precision", "fp32")["peak_gib"] > plain
    assert run_json(capsys, *base, "--attention", "eager")["peak_gib"] > plain
    full = run_json(capsys, "--model", llama_config, "--technique", "full", "--batch-size", "2", "--seq-len", "1024")
    eight = run_json(capsys, "--model", llama_config, "--technique", "full", "--batch-size", "2", "--seq-len", "1024",
                     "--optimizer", "adamw-8bit")
    assert eight["breakdown_gib"]["optimizer_states"] < full["breakdown_gib"]["optimizer_states"]
    cls = run_json(capsys, *base, "--task", "classification", "--num-labels", "5")
    assert cls["breakdown_gib"]["logits_and_loss"] < 0.01 < plain


def test_catalog_model_resolves(capsys):
    from autoft.advisor.catalog import load_catalog

    specs = load_catalog()
    if not specs:
        pytest.skip("catalog is empty")
    spec = max(specs, key=lambda s: s.params if s.family == "decoder" else 0)
    d = run_json(capsys, "--model", spec.id, "--technique", "qlora", "--batch-size", "1", "--seq-len", "256")
    assert d["model"] == spec.id and d["peak_gib"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--technique", "lora", "--batch-size", "1", "--seq-len", "128", "--gpu-memory", "lots"], "memory size"),
    (["--technique", "lora", "--batch-size", "0", "--seq-len", "128"], "--batch-size"),
    (["--technique", "lora", "--batch-size", "1", "--seq-len", "128", "--gpu", "Voodoo5"], "unknown GPU"),
    (["--technique", "lora", "--batch-size", "1", "--seq-len", "128", "--freeze-layers", "99"], "freeze-layers"),
])
def test_bad_values_are_one_line_errors_with_exit_2(capsys, llama_config, argv, needle):
    assert main(["estimate", "--model", llama_config, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoft: error: ") and needle in err[0]


def test_bad_flags_exit_2(capsys, llama_config):
    for argv in (["--technique", "dora", "--batch-size", "1", "--seq-len", "128"],
                 ["--technique", "lora", "--batch-size", "one", "--seq-len", "128"],
                 ["--technique", "lora", "--seq-len", "128"]):
        with pytest.raises(SystemExit) as exc:
            main(["estimate", "--model", llama_config, *argv])
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_encoder_cannot_be_trained_for_generation(capsys, tmp_path):
    cfg = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 768, "num_hidden_layers": 12,
           "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    d = run_json(capsys, "--model", str(p), "--technique", "full", "--batch-size", "8", "--seq-len", "128")
    assert d["setup"]["task"] == "classification"
    assert main(["estimate", "--model", str(p), "--technique", "full", "--batch-size", "8", "--seq-len", "128",
                 "--task", "generation"]) == 2
