"""The fine-tuning techniques, registered explicitly in one place (peft style).

Each technique module has NAME, HELP, DEFAULT_LR, a config dataclass (fields with help metadata,
validated in __post_init__), `apply(model, config, task, gradient_checkpointing) -> model` (sets
what trains, may wrap the model, turns checkpointing on its own way) and
`trainable_parameter_groups(model, config, lr, weight_decay) -> list[dict]` (AdamW groups,
layer-wise LR decay where the technique has it). Adapter techniques (`peft`) also have
`merge(model, config, task, load_base) -> model`: the adapter merged into full weights.

Callers ask a technique what it is (`info.peft`, `info.quantized`, `info.clip_norm`) and never
compare its name."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from autoft.autotrain.techniques import freeze, full, lora, qlora
from autoft.autotrain.techniques.common import config_from_hparams
from autoft.errors import AutoftError


@dataclass(frozen=True)
class TechniqueInfo:
    name: str
    module: ModuleType
    config_cls: type
    help: str
    default_lr: float
    quantized: bool = False  # needs a 4-bit base model at load time
    peft: bool = False  # the base is frozen (stored in the training precision) and the model is a
    # PeftModel: it saves as an adapter, or merged with `module.merge`
    clip_norm: float = 1.0
    merge_in_place: bool = False  # `merge` consumes the trained model (it cannot train further)


TECHNIQUES: dict[str, TechniqueInfo] = {
    "full": TechniqueInfo("full", full, full.FullConfig, full.HELP, full.DEFAULT_LR),
    "freeze": TechniqueInfo("freeze", freeze, freeze.FreezeConfig, freeze.HELP, freeze.DEFAULT_LR),
    "lora": TechniqueInfo("lora", lora, lora.LoraConfig, lora.HELP, lora.DEFAULT_LR, peft=True, merge_in_place=True),
    "qlora": TechniqueInfo("qlora", qlora, qlora.QLoraConfig, qlora.HELP, qlora.DEFAULT_LR,
                           quantized=True, peft=True, clip_norm=qlora.CLIP_NORM),
}


def get_technique(name: str) -> TechniqueInfo:
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise AutoftError(f"unknown technique {name!r}", "use one of " + ", ".join(TECHNIQUES)) from None


def make_config(name: str, hparams: dict):
    """The technique's config from the hparams keys that apply to it (validated)."""
    return config_from_hparams(get_technique(name).config_cls, hparams)


__all__ = ["TECHNIQUES", "TechniqueInfo", "get_technique", "make_config"]
