"""`autoft advise`: flags, --data, --json, the human output, refusals and --force."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoft.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["advise", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_documented_keys(capsys) -> None:
    code, out, _ = run_cli(capsys, "--task", "generation", "--data-size", "5000", "--gpu", "A100-40GB", "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("model", "technique", "batch_size", "gradient_accumulation_steps", "effective_batch_size",
                "seq_len", "precision", "gradient_checkpointing", "optimizer", "lora", "freeze_layers",
                "estimate", "fits", "memory_gib", "gpu", "reasons", "alternatives", "search_space", "task",
                "num_labels", "warnings"):
        assert key in d, key
    assert d["gpu"]["name"] == "A100-40GB" and d["precision"] == "bf16" and d["fits"] is True
    assert all({"rule", "because"} <= set(r) for r in d["reasons"])


def test_human_output(capsys) -> None:
    code, out, _ = run_cli(capsys, "--task", "classification", "--data-size", "5000", "--gpu", "T4")
    assert code == 0
    for word in ("model", "technique", "batch", "sequence", "precision", "memory", "why", "alternatives",
                 "GiB", "fp16", "FIT-BATCH", "MODEL-RANK", "█"):
        assert word in out, word


def test_data_fills_in_the_question(capsys, shared_data) -> None:
    code, out, _ = run_cli(capsys, "--data", str(shared_data / "tweet_sentiment_de"), "--gpu", "T4", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["task"] == "classification" and d["num_labels"] == 3
    assert d["question"]["language"] == "de" and d["question"]["data_size"] > 1000
    assert "de" in d["model"]["languages"] or "multi" in d["model"]["languages"]
    assert d["seq_len"] <= 128  # tweets are short: the length comes from the data, not the default


def test_flags_beat_the_data(capsys, shared_data) -> None:
    code, out, _ = run_cli(capsys, "--data", str(shared_data / "alpaca"), "--gpu", "T4", "--language", "en",
                           "--data-size", "123", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["task"] == "generation" and d["question"]["data_size"] == 123 and d["question"]["language"] == "en"


def test_refusal_is_one_line_exit_2_and_force_accepts(capsys) -> None:
    argv = ["--task", "generation", "--model", "mistralai/Mistral-7B-v0.3", "--technique", "lora", "--gpu", "T4"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "qlora" in err and "--force" in err and "Traceback" not in err
    code, out, _ = run_cli(capsys, *argv, "--force", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["fits"] is False and d["technique"] == "lora"


def test_bad_flags(capsys) -> None:
    code, _, err = run_cli(capsys, "--gpu", "NoSuchGPU-9000")
    assert code == 2 and "NoSuchGPU" in err
    code, _, err = run_cli(capsys, "--text-column", "x")
    assert code == 2 and "--data" in err
    code, _, err = run_cli(capsys, "--data", "/nonexistent/file.csv")
    assert code == 2


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["advise", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "autoft advise --data" in out and "--json" in out and "--force" in out


def test_whole_process_offline() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "autoft", "advise", "--gpu", "L4", "--task", "generation", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["gpu"]["name"] == "L4"
    # the advisor never pulls in the heavy libraries
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from autoft.cli import main; main(['advise','--gpu','T4','--json']);"
                        "bad=[m for m in ('torch','transformers','textual') if m in sys.modules];"
                        "sys.stderr.write(repr(bad))"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "[]", r.stderr


def test_human_output_for_freeze_and_a_forced_misfit(capsys) -> None:
    code, out, _ = run_cli(capsys, "--gpu", "cpu", "--task", "classification", "--model",
                           "google-bert/bert-base-uncased", "--data-size", "3000")
    assert code == 0 and "freeze (bottom 9 of 12 layers frozen)" in out and "TECH-004" in out
    code, out, _ = run_cli(capsys, "--task", "generation", "--model", "mistralai/Mistral-7B-v0.3",
                           "--technique", "full", "--gpu", "T4", "--force")
    assert code == 0 and "DOES NOT FIT" in out and "warnings" in out and "nearest setting" in out


def test_speed_is_shown_and_in_the_json(capsys) -> None:
    code, out, _ = run_cli(capsys, "--task", "generation", "--data-size", "20000", "--gpu", "RTX-4090")
    assert code == 0
    line = next(x for x in out.splitlines() if x.strip().startswith("speed"))
    assert "examples/s predicted" in line and "per epoch of 20,000 examples" in line and "min" in line
    assert "TFLOP/s" in out and "SPEED" in out
    code, out, _ = run_cli(capsys, "--task", "generation", "--data-size", "20000", "--gpu", "RTX-4090", "--json")
    sp = json.loads(out)["speed"]
    assert sp["method"] == "model" and sp["examples_per_s"] > 0 and sp["epoch_s"] > 0 and "Ada" in sp["assumption"]


def test_measure_needs_data_and_this_machine(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "--task", "classification", "--gpu", "cpu", "--measure")
    assert code == 2 and "--data" in err and "\n" not in err.strip()
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(30)))
    code, _, err = run_cli(capsys, "--data", str(data), "--gpu", "T4", "--measure")
    assert code == 2 and "times this machine" in err
