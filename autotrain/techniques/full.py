"""Full fine-tuning: every weight trains (the strongest, and the most memory: weights, gradients
and two AdamW states per parameter). Optional layer-wise learning-rate decay for encoders."""
from __future__ import annotations

from dataclasses import dataclass, field

from autoft.autotrain.techniques.common import enable_checkpointing, parameter_groups
from autoft.errors import AutoftError

NAME = "full"
HELP = "train every weight"
DEFAULT_LR = 2e-5


@dataclass
class FullConfig:
    layer_decay: float = field(default=1.0, metadata={
        "help": "layer-wise learning-rate decay per block from the top (1.0: off; 0.8-0.95 for encoders)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.layer_decay <= 1.0:
            raise AutoftError(f"layer_decay must be in (0, 1], got {self.layer_decay}", "use 0.8-0.95, or 1.0 for none")


def apply(model, config: FullConfig, task: str, gradient_checkpointing: bool = False):
    enable_checkpointing(model, gradient_checkpointing)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameter_groups(model, config: FullConfig, lr: float, weight_decay: float = 0.0) -> list[dict]:
    return parameter_groups(model, lr, weight_decay, config.layer_decay)
