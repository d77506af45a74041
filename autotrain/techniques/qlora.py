"""QLoRA: the base weights are stored in 4-bit NF4 with double quantisation (bitsandbytes),
computed in the training precision; peft's k-bit preparation upcasts the remaining (norms,
embeddings, head) weights to fp32; then LoRA adapters train as in `lora`. The classification
head and the LM head are never quantised. bitsandbytes >= 0.45 also runs this on the CPU."""
from __future__ import annotations

from dataclasses import dataclass

from autoft.autotrain.techniques import lora
from autoft.autotrain.techniques.common import parameter_groups

NAME = "qlora"
HELP = "LoRA on a 4-bit NF4 base model (bitsandbytes): least memory for the weights"
DEFAULT_LR = 2e-4
CLIP_NORM = 0.3  # the QLoRA paper's max grad norm
# Modules that stay in full precision: the heads (new or tied) and BERT's pooler.
SKIP_MODULES = ["classifier", "score", "lm_head", "pooler"]


@dataclass
class QLoraConfig(lora.LoraConfig):
    """Same knobs as LoRA; the 4-bit compute dtype follows the Trial's precision."""


def quantization_config(precision: str):
    """transformers BitsAndBytesConfig: NF4, double quantisation, compute in `precision`."""
    import torch
    from transformers import BitsAndBytesConfig

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=list(SKIP_MODULES))


def apply(model, config: QLoraConfig, task: str, gradient_checkpointing: bool = False):
    from peft import prepare_model_for_kbit_training

    # peft turns gradient checkpointing on by default here; the Trial decides, so say it explicitly.
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None)
    keep_cpu_layout(model)
    return lora.apply(model, config, task)  # (checkpointing is on already, when asked)


def merge(model, config: QLoraConfig, task: str, load_base):
    """QLoRA merge: `load_base()` reloads the base in the compute dtype (not 4-bit); the trained
    adapter and head are loaded into it and merged. The adapter was trained against the NF4
    weights, so the merged model differs from the 4-bit one by the quantisation error (the usual
    QLoRA merge)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    base = load_base()
    merged = get_peft_model(base, lora.peft_config(base, config, task))
    set_peft_model_state_dict(merged, get_peft_model_state_dict(model))
    return merged.merge_and_unload()


def keep_cpu_layout(model) -> None:
    """Keep the 4-bit weights in one layout on the CPU. On a CPU with AVX512-BF16, bitsandbytes
    repacks a Linear4bit's weights for its inference kernel at the first forward in eval mode
    (absmax stored in bf16) and unpacks them when training resumes, quantising absmax again: every
    evaluation between training steps would then perturb the frozen base, and the saved adapter
    would no longer reproduce the trained model on a freshly quantised one. No effect on a GPU."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def trainable_parameter_groups(model, config: QLoraConfig, lr: float, weight_decay: float = 0.0) -> list[dict]:
    return parameter_groups(model, lr, weight_decay)
