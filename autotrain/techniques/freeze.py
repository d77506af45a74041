"""Freeze: train the top layers and the head; the embeddings and the bottom `freeze_layers`
blocks stay frozen (no gradients, no optimizer state for them). An encoder-decoder freezes the
bottom blocks of both its encoder and its decoder stack. Optional layer-wise LR decay across the
trained blocks."""
from __future__ import annotations

from dataclasses import dataclass, field

from autoft.autotrain.techniques.common import enable_checkpointing, find_layer_stacks, layer_index, parameter_groups
from autoft.errors import AutoftError

NAME = "freeze"
HELP = "train the top layers and the head; freeze the embeddings and the bottom layers"
DEFAULT_LR = 1e-4


@dataclass
class FreezeConfig:
    freeze_layers: int | None = field(default=None, metadata={
        "help": "number of bottom layers kept frozen, in each stack of an encoder-decoder (default: all "
                "but the top quarter, at least one trained)"})
    layer_decay: float = field(default=1.0, metadata={
        "help": "layer-wise learning-rate decay per trained block from the top (1.0: off; 0.8-0.95)"})

    def __post_init__(self) -> None:
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise AutoftError(f"freeze_layers must be 0 or more, got {self.freeze_layers}",
                              "pass the number of bottom layers to keep frozen")
        if not 0.0 < self.layer_decay <= 1.0:
            raise AutoftError(f"layer_decay must be in (0, 1], got {self.layer_decay}", "use 0.8-0.95, or 1.0 for none")


def frozen_count(num_layers: int, freeze_layers: int | None) -> int:
    """How many bottom blocks to freeze (pure)."""
    if freeze_layers is None:
        return num_layers - max(1, num_layers // 4)
    return freeze_layers


def apply(model, config: FreezeConfig, task: str, gradient_checkpointing: bool = False):
    enable_checkpointing(model, gradient_checkpointing)
    stacks = [(name, layers, frozen_count(len(layers), config.freeze_layers))
              for name, layers in find_layer_stacks(model)]
    for name, layers, k in stacks:
        if k >= len(layers):
            raise AutoftError(f"freeze_layers={k} leaves none of the {len(layers)} layers of {name} to train",
                              f"pass --freeze-layers {len(layers) - 1} or less")
    embed_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    for pname, p in model.named_parameters():
        in_frozen_block = any((i := layer_index(pname, name)) is not None and i < k for name, _, k in stacks)
        frozen = (id(p) in embed_ids or "embeddings." in pname or "embed_tokens" in pname
                  or "embed_positions" in pname or _feeds_every_layer(pname) or in_frozen_block)
        p.requires_grad_(not frozen)
    # A tied output head (lm_head == embed_tokens) stays frozen with the embeddings.
    return model


def _feeds_every_layer(name: str) -> bool:
    """Weights outside the blocks that every block reads, which would make backward run through
    the frozen bottom layers (and keep their activations) if they trained: DeBERTa's norm of the
    relative position embeddings (encoder.LayerNorm)."""
    return ".encoder.LayerNorm." in name


def trainable_parameter_groups(model, config: FreezeConfig, lr: float, weight_decay: float = 0.0) -> list[dict]:
    return parameter_groups(model, lr, weight_decay, config.layer_decay)
