"""Techniques: registry, config validation, what each one makes trainable, parameter groups."""
from __future__ import annotations

import pytest
import torch

from autoft.autotrain.techniques import TECHNIQUES, get_technique, make_config
from autoft.autotrain.techniques import freeze, full, lora, qlora
from autoft.autotrain.techniques.common import find_layers, head_names, parameter_groups
from autoft.errors import AutoftError

torch.set_num_threads(2)


def tiny_bert(num_labels=3):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=4, num_attention_heads=4,
                                                    num_labels=num_labels))


def tiny_llama(cls="causal"):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=3,
                      tie_word_embeddings=True)
    return (LlamaForCausalLM if cls == "causal" else LlamaForSequenceClassification)(cfg)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_has_the_four_techniques_with_their_modules():
    assert list(TECHNIQUES) == ["full", "freeze", "lora", "qlora"]
    for name, info in TECHNIQUES.items():
        assert info.module.NAME == name
        assert callable(info.module.apply) and callable(info.module.trainable_parameter_groups)
    assert TECHNIQUES["qlora"].quantized and TECHNIQUES["qlora"].clip_norm == 0.3
    assert TECHNIQUES["lora"].peft and not TECHNIQUES["full"].peft
    with pytest.raises(AutoftError, match="unknown technique"):
        get_technique("dora")


@pytest.mark.parametrize("name, hparams, match", [
    ("lora", {"lora_r": 0}, "rank"),
    ("lora", {"lora_dropout": 1.5}, "dropout"),
    ("lora", {"lora_targets": "everything"}, "targets"),
    ("qlora", {"lora_alpha": -1}, "alpha"),
    ("freeze", {"freeze_layers": -1}, "freeze_layers"),
    ("freeze", {"layer_decay": 1.5}, "layer_decay"),
    ("full", {"layer_decay": 0.0}, "layer_decay"),
])
def test_configs_reject_bad_values(name, hparams, match):
    with pytest.raises(AutoftError, match=match):
        make_config(name, hparams)


def test_search_knobs_per_technique_match_the_technique_configs():
    # schedule.py (pure, no torch) names the knobs each technique reads; they must be the
    # technique config's fields that have a search default, no more and no fewer
    from dataclasses import fields

    from autoft.autotrain.schedule import DEFAULT_HPARAMS, TECHNIQUE_KNOBS

    assert set(TECHNIQUE_KNOBS) == set(TECHNIQUES)
    for name, info in TECHNIQUES.items():
        cfg_fields = {f.name for f in fields(info.config_cls)}
        assert set(TECHNIQUE_KNOBS[name]) == cfg_fields & set(DEFAULT_HPARAMS), name


def test_make_config_takes_only_the_keys_that_apply():
    cfg = make_config("lora", {"lora_r": 8, "learning_rate": 1e-3, "freeze_layers": 2})
    assert cfg.lora_r == 8 and cfg.lora_alpha == 16  # alpha defaults to 2r
    assert make_config("freeze", {"lora_r": 8, "freeze_layers": 2}).freeze_layers == 2
    # every config field carries help text (fed to CLI/TUI)
    from dataclasses import fields
    for info in TECHNIQUES.values():
        assert all(f.metadata.get("help") for f in fields(info.config_cls))


def test_find_layers_bert_and_llama():
    name, layers = find_layers(tiny_bert())
    assert name == "bert.encoder.layer" and len(layers) == 4
    name, layers = find_layers(tiny_llama())
    assert name == "model.layers" and len(layers) == 4
    assert head_names(tiny_bert()) == ["classifier"]
    assert head_names(tiny_llama("cls")) == ["score"]


def test_full_trains_everything():
    m = full.apply(tiny_bert(), full.FullConfig(), "classification")
    assert trainable(m) == {n for n, _ in m.named_parameters()}


@pytest.mark.parametrize("k", [1, 3])
def test_freeze_bert_freezes_embeddings_and_bottom_layers(k):
    m = freeze.apply(tiny_bert(), freeze.FreezeConfig(freeze_layers=k), "classification")
    t = trainable(m)
    assert not any("embeddings" in n for n in t)
    for i in range(4):
        in_layer = any(n.startswith(f"bert.encoder.layer.{i}.") for n in t)
        assert in_layer == (i >= k)
    assert {"classifier.weight", "classifier.bias"} <= t


def test_freeze_llama_default_trains_top_quarter_and_final_norm():
    m = freeze.apply(tiny_llama(), freeze.FreezeConfig(), "generation")
    t = trainable(m)
    assert freeze.frozen_count(4, None) == 3 and freeze.frozen_count(2, None) == 1
    assert any(n.startswith("model.layers.3.") for n in t)
    assert not any(n.startswith(("model.layers.0.", "model.layers.2.")) for n in t)
    assert "model.norm.weight" in t
    assert "model.embed_tokens.weight" not in t  # (tied lm_head stays frozen with it)


def test_freeze_rejects_freezing_every_layer():
    with pytest.raises(AutoftError, match="leaves none"):
        freeze.apply(tiny_bert(), freeze.FreezeConfig(freeze_layers=4), "classification")


def test_layer_decay_groups_scale_by_depth_and_skip_decay_on_norms():
    m = freeze.apply(tiny_bert(), freeze.FreezeConfig(freeze_layers=2, layer_decay=0.5), "classification")
    groups = freeze.trainable_parameter_groups(m, freeze.FreezeConfig(freeze_layers=2, layer_decay=0.5),
                                               lr=1.0, weight_decay=0.1)
    lr_of = {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(m.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == (1.0, 0.1)
    assert lr_of[id(named["bert.encoder.layer.3.attention.self.query.weight"])] == (0.5, 0.1)
    assert lr_of[id(named["bert.encoder.layer.2.attention.self.query.weight"])] == (0.25, 0.1)
    assert lr_of[id(named["bert.encoder.layer.3.attention.self.query.bias"])] == (0.5, 0.0)
    assert lr_of[id(named["bert.encoder.layer.3.output.LayerNorm.weight"])][1] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(trainable(m))
    # no decay: one lr everywhere
    assert {g["lr"] for g in parameter_groups(m, 1e-3, 0.0)} == {1e-3}


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_lora_freezes_base_and_keeps_head_trainable(task):
    base = tiny_bert() if task == "classification" else tiny_llama()
    m = lora.apply(base, lora.LoraConfig(lora_r=4), task)
    t = trainable(m)
    assert t and all("lora_" in n or "modules_to_save" in n for n in t)
    if task == "classification":
        assert any("classifier.modules_to_save" in n for n in t)
    else:
        assert not any("modules_to_save" in n for n in t)
    assert any(".mlp." in n or "intermediate" in n for n in t)  # all-linear reaches the MLP


def test_lora_attention_targets_come_from_peft_table():
    assert lora.target_modules("llama", "attention") == ["q_proj", "v_proj"]
    assert lora.target_modules("no-such-type", "attention") == "all-linear"
    assert lora.target_modules("llama", "all-linear") == "all-linear"


def test_lora_qkvo_targets_every_attention_projection_and_nothing_else():
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    assert lora.target_modules("llama", "qkvo", tiny_llama()) == [
        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    # BERT: the attention output's dense layer, not the MLP's output.dense
    assert lora.target_modules("bert", "qkvo", tiny_bert()) == [
        "attention.output.dense", "self.key", "self.query", "self.value"]
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    assert {n.split(".")[0] for n in lora.target_modules("t5", "qkvo", t5)} == {"SelfAttention", "EncDecAttention"}
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32))
    assert "encoder_attn.out_proj" in lora.target_modules("bart", "qkvo", bart)
    m = lora.apply(tiny_llama(), lora.LoraConfig(lora_r=4, lora_targets="qkvo"), "generation")
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable(m) if ".lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_estimator_counts_the_same_qkvo_adapters_peft_trains():
    from autoft.advisor.catalog import spec_from_config
    from autoft.advisor.memory import lora_params
    from autoft.advisor.spec import TrainSetup

    base = tiny_llama()
    spec = spec_from_config(base.config.to_dict(), "tiny")
    m = lora.apply(base, lora.LoraConfig(lora_r=4, lora_targets="qkvo"), "generation")
    n = sum(p.numel() for name, p in m.named_parameters() if p.requires_grad)
    assert lora_params(spec, TrainSetup(lora_rank=4, lora_targets="qkvo")) == n


def test_qlora_quantization_config_is_nf4_double_quant():
    q = qlora.quantization_config("bf16")
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert {"classifier", "score", "lm_head"} <= set(q.llm_int8_skip_modules)


def test_qlora_apply_on_4bit_model_trains_adapters_and_head(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification

    tiny_bert().save_pretrained(tmp_path)
    m = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, quantization_config=qlora.quantization_config("fp32"), device_map={"": "cpu"})
    assert isinstance(m.bert.encoder.layer[0].attention.self.query, bnb.nn.Linear4bit)
    assert not isinstance(m.classifier, bnb.nn.Linear4bit)
    m = qlora.apply(m, qlora.QLoraConfig(lora_r=4), "classification")
    t = trainable(m)
    assert any("classifier.modules_to_save" in n for n in t)
    assert all("lora_" in n or "modules_to_save" in n for n in t)


def test_qlora_evaluation_between_training_steps_leaves_the_4bit_base_as_quantised(tmp_path):
    # bitsandbytes repacks 4-bit weights for its CPU inference kernel on an eval-mode forward
    # (on AVX512-BF16 CPUs) and requantises them when training resumes; apply() must prevent it.
    # Without it the base drifts and logits of the same model change between two evaluations.
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)  # wide enough for bitsandbytes' packed CPU layout (it fails on tiny_bert's)
    BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=256, intermediate_size=512,
                                             num_hidden_layers=2, num_attention_heads=4)).save_pretrained(tmp_path)
    m = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, quantization_config=qlora.quantization_config("fp32"), device_map={"": "cpu"})
    m = qlora.apply(m, qlora.QLoraConfig(lora_r=4), "classification")
    before = {k: v.clone() for k, v in m.state_dict().items() if "base_layer.weight" in k}
    ids = torch.randint(5, 60, (2, 12))
    m.eval()
    with torch.no_grad():
        first = m(input_ids=ids).logits
    m.train()
    m.eval()
    with torch.no_grad():
        again = m(input_ids=ids).logits
    after = {k: v for k, v in m.state_dict().items() if "base_layer.weight" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
