"""LoRA (peft): the base weights stay frozen; low-rank adapters of rank r are trained on the
targeted linear layers. For classification the new head (classifier / score) trains in full
(`modules_to_save`), since a frozen random head cannot learn."""
from __future__ import annotations

from dataclasses import dataclass, field

from autoft.autotrain.techniques.common import enable_checkpointing, head_names, parameter_groups
from autoft.errors import AutoftError

NAME = "lora"
HELP = "train low-rank adapters (peft); the base model stays frozen"
DEFAULT_LR = 2e-4
TARGETS = ("all-linear", "attention", "qkvo")


@dataclass
class LoraConfig:
    lora_r: int = field(default=16, metadata={"help": "adapter rank r (8, 16 or 64 are typical)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "scaling alpha (default 2 x r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter input (0-0.1)"})
    lora_targets: str = field(default="all-linear", metadata={
        "help": "all-linear (every linear layer but the output), attention (peft's attention targets for the "
                "model type, q and v on most) or qkvo (every attention projection: q, k, v and o)"})

    def __post_init__(self) -> None:
        self.lora_r = int(self.lora_r)
        if self.lora_r < 1:
            raise AutoftError(f"LoRA rank must be at least 1, got {self.lora_r}", "use 8, 16 or 64")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.lora_alpha <= 0:
            raise AutoftError(f"lora_alpha must be positive, got {self.lora_alpha}", "use 2 x rank")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise AutoftError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}", "use 0, 0.05 or 0.1")
        if self.lora_targets not in TARGETS:
            raise AutoftError(f"unknown LoRA targets {self.lora_targets!r}", "use all-linear, attention or qkvo")


def target_modules(model_type: str, targets: str, model=None):
    """peft target_modules for a model type: "all-linear", the model type's attention projections
    from peft's own table (falling back to all-linear for unknown types), or for "qkvo" every
    linear layer inside the model's attention modules (`attention_linears`, needs the model)."""
    if targets == "qkvo":
        if model is None:
            raise ValueError("qkvo targets are found in the model: pass it")
        return attention_linears(model)
    if targets == "attention":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
        if model_type in table:
            return list(table[model_type])
    return "all-linear"


def attention_linears(model) -> list[str]:
    """Names (as peft suffixes) of every linear layer inside an attention module (a module whose
    class name has "Attention": LlamaAttention, BertAttention, T5Attention, BartAttention,
    DistilBERT's MultiHeadSelfAttention, ...), cross-attention included. Each name is the innermost
    such module's own attribute name plus the path inside it ("self_attn.q_proj", BERT's
    "self.query" and "attention.output.dense"), which keeps an MLP layer of the same leaf name
    (BERT's other "output.dense") out. Finding them in the model rather than in a table covers every
    architecture, fused projections (phi3's qkv_proj, GPT-2's c_attn) included."""
    linear_types = ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")
    names: set[str] = set()
    attention: list[str] = []  # attention modules seen so far (named_modules walks parents first)
    for name, module in model.named_modules():
        kind = type(module).__name__
        if "Attention" in kind and name:
            attention.append(name)
        elif kind in linear_types:
            inside = [a for a in attention if name.startswith(a + ".")]
            if inside:
                attn = max(inside, key=len)
                names.add(attn.rsplit(".", 1)[-1] + name[len(attn):])
    if not names:
        raise AutoftError("no linear layer inside an attention module was found for LoRA qkvo targets",
                          "use --lora-targets all-linear or attention")
    return sorted(names)


def peft_config(model, config: LoraConfig, task: str):
    from peft import LoraConfig as PeftLoraConfig, TaskType

    heads = head_names(model) if task == "classification" else []
    # "all-linear" leaves out the output layer (classifier / score) but not a new head in front of
    # it (DistilBERT's pre_classifier): exclude that from the adapters, since it trains in full and
    # peft matches modules_to_save by suffix ("pre_classifier" ends in "classifier")
    inner = [h for h in heads if h not in ("classifier", "score")]
    if task == "classification":
        task_type = TaskType.SEQ_CLS
    elif getattr(model.config, "is_encoder_decoder", False):
        task_type = TaskType.SEQ_2_SEQ_LM  # T5, BART, Marian: adapters in the encoder and the decoder
    else:
        task_type = TaskType.CAUSAL_LM
    return PeftLoraConfig(
        task_type=task_type,
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=target_modules(getattr(model.config, "model_type", ""), config.lora_targets, model),
        exclude_modules=inner or None,
        modules_to_save=heads or None,
    )


def apply(model, config: LoraConfig, task: str, gradient_checkpointing: bool = False):
    from peft import get_peft_model

    enable_checkpointing(model, gradient_checkpointing)
    return get_peft_model(model, peft_config(model, config, task))


def merge(model, config: LoraConfig, task: str, load_base):
    """The adapter merged into the base weights (the PeftModel is consumed). `load_base` is
    unused: LoRA's base is already in the compute dtype."""
    return model.merge_and_unload()


def trainable_parameter_groups(model, config: LoraConfig, lr: float, weight_decay: float = 0.0) -> list[dict]:
    return parameter_groups(model, lr, weight_decay)
