"""Loading a model and its tokenizer for a task and technique.

`source` is a Hub id (read from the local cache only when HF_HUB_OFFLINE=1), a local model folder,
or a `.gguf` file (transformers dequantises it; the tokenizer comes from the same file).
Classification gets AutoModelForSequenceClassification with the label mapping; generation
AutoModelForCausalLM; summarization and translation AutoModelForSeq2SeqLM for an encoder-decoder
(T5, BART, Marian, ...) and AutoModelForCausalLM for a decoder (instruction-style prompts). SDPA attention where the architecture supports it.
"""
from __future__ import annotations

import os
from pathlib import Path

from autoft.advisor.spec import TASKS, check_choice
from autoft.errors import AutoftError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_source(source: str | os.PathLike) -> tuple[str, dict]:
    """(path or id to pass to from_pretrained, extra kwargs). A .gguf file becomes its folder plus
    gguf_file=name; a Hub id gets local_files_only when offline. Raises AutoftError for a missing
    local path."""
    s = str(source)
    p = Path(s).expanduser()
    if s.lower().endswith(".gguf"):
        if not p.is_file():
            raise AutoftError(f"GGUF file {s} does not exist", "check the path given to --model")
        return str(p.parent.resolve()), {"gguf_file": p.name}
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise AutoftError(f"{s} has no config.json", "point --model at a model folder, a .gguf file or a Hub id")
        return str(p.resolve()), {}
    if s.startswith((".", "/", "~")) or s.count("/") > 1:
        raise AutoftError(f"model path {s} does not exist", "check the path given to --model")
    return s, ({"local_files_only": True} if _offline() else {})


def _not_available(source: str, err: Exception) -> AutoftError:
    if _offline():
        return AutoftError(f"model {source} is not in the local Hugging Face cache ({type(err).__name__})",
                           "download it first with `hf download " + source + "` while online, or unset HF_HUB_OFFLINE")
    return AutoftError(f"cannot load model {source}: {str(err).splitlines()[0][:200]}",
                       "check the model id or path, and your network or Hub token")


def gguf_folder(gguf: str | os.PathLike) -> Path:
    """A .gguf file as a model folder (config, tokenizer, safetensors weights), converted once and
    kept under $AUTOFT_CACHE/gguf (default ~/.cache/autoft/gguf), keyed by the file's name, size
    and modification time. Why: transformers parses a GGUF file's metadata (the whole vocabulary)
    for each of config, tokenizer and weights - 70 s for SmolLM2-135M on 2 cores, every time a
    trial is built - where a converted folder loads in a few seconds. The conversion is written to
    a temporary folder and renamed, so concurrent processes (Ray trials, DDP ranks) never read a
    half-written one."""
    import shutil
    import tempfile

    src = Path(gguf).expanduser().resolve()
    st = src.stat()
    key = f"{src.stem}-{st.st_size}-{st.st_mtime_ns}"
    from autoft.advisor.hub import cache_root

    out = cache_root() / "gguf" / key
    if (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out.parent))
    try:
        with _quiet_loading():
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        tok.save_pretrained(tmp)
        # the weights are dequantised already: save them as plain weights, not as "GGUF-quantized"
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        try:
            tmp.rename(out)
        except OSError:  # another process converted it first
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _local(path: str, kw: dict) -> tuple[str, dict]:
    """from_pretrained's (path, kwargs) with a .gguf file swapped for its converted folder."""
    if "gguf_file" not in kw:
        return path, kw
    kw = dict(kw)
    return str(gguf_folder(Path(path) / kw.pop("gguf_file"))), kw


def load_tokenizer(source: str | os.PathLike, *, trust_remote_code: bool = False):
    """The source's tokenizer, with a pad token (eos when it has none) and right padding."""
    from transformers import AutoTokenizer

    path, kw = _local(*resolve_source(source))
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise _not_available(str(source), e) from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise AutoftError(f"the tokenizer of {source} has neither a pad nor an eos token",
                              "use a model whose tokenizer defines one")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


class _quiet_loading:
    """Silence transformers' per-load progress bars and load reports (the new head's "MISSING"
    weights are expected here), restoring the previous settings afterwards."""

    def __enter__(self):
        from transformers.utils import logging as tlog

        self._level = tlog.get_verbosity()
        self._bars = tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as tlog

        tlog.set_verbosity(self._level)
        if self._bars:
            tlog.enable_progress_bar()
        return False


def weights_dtype(technique: str, precision: str) -> str:
    """torch dtype name the weights are loaded in: fp32 masters for full/freeze; the training
    precision for an adapter technique's frozen base (lora; qlora's unquantised rest)."""
    from autoft.autotrain.techniques import get_technique

    return DTYPES[precision] if get_technique(technique).peft else "float32"


def _has_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


# The config attributes that hold a dropout probability, by architecture family (BERT, RoBERTa,
# DeBERTa, ELECTRA: *_dropout_prob; DistilBERT, BART, T5-ish: dropout / attention_dropout /
# activation_dropout / dropout_rate; GPT-2: *_pdrop; Llama, Qwen2, Mistral, Gemma: attention_dropout;
# some decoders: hidden_dropout, resid_dropout, embd_dropout). classifier_dropout is left alone:
# None there means "use hidden_dropout_prob", which follows the knob.
DROPOUT_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                 "activation_dropout", "dropout_rate", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                 "hidden_dropout", "resid_dropout", "embd_dropout", "embedding_dropout", "seq_classif_dropout",
                 "mlp_dropout", "attention_probability_dropout", "hidden_dropout_rate")


def dropout_overrides(config, p: float) -> dict:
    """{attribute: p} for every dropout probability `config` has (a number, so flags and None
    fields are not touched). Pure: reads attributes only, no torch."""
    if not 0.0 <= float(p) < 1.0:
        raise AutoftError(f"model_dropout must be in [0, 1), got {p}", "use e.g. 0.0, 0.1 or 0.2")
    out = {}
    for name in DROPOUT_ATTRS:
        v = getattr(config, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(p)
    return out


def load_model_and_tokenizer(source, task: str, technique: str, *, num_labels: int | None = None,
                             label_names: list[str] | None = None, precision: str = "fp32",
                             device: str = "cpu", trust_remote_code: bool = False, quantization=None,
                             problem_type: str | None = None, model_dropout: float | None = None):
    """Load (model, tokenizer), unwrapped (techniques are applied by the caller).

    Weights: fp32 where the weights train (full/freeze: the fp32 master copy; bf16/fp16 run under
    autocast); a frozen adapter base (lora) is stored in `precision`; a quantized technique's base
    (qlora) is 4-bit NF4 (`quantization`, default `techniques.qlora.quantization_config(precision)`;
    False loads it unquantized in `precision`, as a merge needs).
    `problem_type` ("multi_label_classification": sigmoid outputs) goes into the config, so the
    saved model says how to read its logits; `model_dropout` sets every dropout probability of
    the config (see dropout_overrides)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from autoft.advisor.spec import SEQ2SEQ_TASKS
    from autoft.autotrain.techniques import get_technique

    check_choice("task", task, TASKS)
    check_choice("precision", precision, tuple(DTYPES))
    info = get_technique(technique)
    tok = load_tokenizer(source, trust_remote_code=trust_remote_code)
    path, kw = _local(*resolve_source(source))
    kw["trust_remote_code"] = trust_remote_code
    dtype = getattr(torch, weights_dtype(technique, precision))
    quantized = info.quantized and quantization is not False
    if quantized:
        if quantization is None:
            quantization = info.module.quantization_config(precision)
        kw["quantization_config"] = quantization
        kw["device_map"] = {"": device}
    try:
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in kw.items() if k in (
            "gguf_file", "local_files_only", "trust_remote_code")})
    except (OSError, ValueError) as e:
        raise _not_available(str(source), e) from e
    if task == "classification":
        if label_names:
            num_labels = len(label_names)
        if not num_labels or num_labels < 2:
            raise AutoftError("classification needs at least 2 labels", "check the data's label column")
        names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(num_labels)]
        extra = {"num_labels": num_labels, "id2label": dict(enumerate(names)),
                 "label2id": {n: i for i, n in enumerate(names)}}
        if getattr(config, "pad_token_id", None) is None:
            extra["pad_token_id"] = tok.pad_token_id  # decoder classifiers find the last token by it
        if _has_classifier(config) and int(getattr(config, "num_labels", 0) or 0) != num_labels:
            # a fine-tuned classifier with another label set: keep its body, train a new head
            # (without this, from_pretrained refuses the checkpoint over the head's shape)
            extra["ignore_mismatched_sizes"] = True
        if problem_type:
            extra["problem_type"] = problem_type
        cls = AutoModelForSequenceClassification
    elif getattr(config, "is_encoder_decoder", False):
        if task not in SEQ2SEQ_TASKS:
            raise AutoftError(f"{source} is an encoder-decoder: autoft trains those for summarization "
                              "and translation", "pass --task summarization or translation, or a decoder model")
        from transformers import AutoModelForSeq2SeqLM

        extra, cls = {}, AutoModelForSeq2SeqLM
    else:
        extra, cls = {}, AutoModelForCausalLM
    if model_dropout is not None:
        extra.update(dropout_overrides(config, model_dropout))
    try:
        with _quiet_loading():
            model = cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **extra, **kw)
    except ValueError as e:
        if "sdpa" not in str(e).lower() and "attention" not in str(e).lower():
            raise AutoftError(f"cannot load {source} for {task}: {str(e).splitlines()[0][:200]}",
                              "pick a model whose architecture supports this task") from e
        with _quiet_loading():
            model = cls.from_pretrained(path, dtype=dtype, **extra, **kw)  # no SDPA for this architecture
    except OSError as e:
        raise _not_available(str(source), e) from e
    if task == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if not quantized:  # (a quantized model is placed by device_map)
        model.to(device)
    return model, tok
