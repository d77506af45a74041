"""Shared pieces of the techniques: finding the transformer block list, the head, gradient
checkpointing, and building optimizer parameter groups (no weight decay on biases and norms;
optional layer-wise LR decay). torch is imported inside the functions: the registry stays cheap to
import for callers that only ask a technique what it is (the card, the report)."""
from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from autoft.errors import AutoftError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Sequence-classification heads, new at load time: BERT-style classifier, decoder-style score,
# DistilBERT's pre_classifier (a new dense layer in front of its classifier).
HEAD_NAMES = ("classifier", "score", "pre_classifier")


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The list of transformer blocks: BERT-style `encoder.layer`, Llama-style `model.layers`,
    GPT-2-style `transformer.h`, ... found generically as the largest nn.ModuleList (by parameter
    count) of identical blocks. Returns (qualified name, the ModuleList)."""
    from torch import nn

    best, best_n = None, -1
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = (name, mod), n
    if best is None:
        raise AutoftError(f"cannot find the transformer layers of {type(model).__name__}",
                          "use --technique full or lora for this model")
    return best


def find_layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every stack of transformer blocks: one for an encoder or a decoder, two for an
    encoder-decoder (T5's `encoder.block` and `decoder.block`, BART's `encoder.layers` and
    `decoder.layers`). A stack is a ModuleList of identical blocks holding at least a third of the
    parameters of the largest one (an encoder stack holds about 3/4 of its decoder's, which adds
    cross-attention). Encoder first, in module order."""
    from torch import nn

    best_name, best = find_layers(model)
    top = sum(p.numel() for p in best.parameters())
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if sum(p.numel() for p in mod.parameters()) * 3 >= top:
                out.append((name, mod))
    return out or [(best_name, best)]


def head_names(model: nn.Module) -> list[str]:
    """Names of the classification head modules the model has (classifier / score)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return [h for h in HEAD_NAMES if h in names]


def layer_index(param_name: str, layers_name: str) -> int | None:
    """Block index of a parameter under the layer list `layers_name` (None if not in a block)."""
    marker = layers_name + "."
    i = param_name.find(marker)
    if i < 0:
        return None
    rest = param_name[i + len(marker):]
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups over the trainable parameters. Weight decay skips biases and norms.
    With layer_decay < 1, block i of L gets lr * layer_decay ** (L - i) (the top block
    lr * layer_decay, the bottom ones less); the head and final norm keep lr; embeddings get the
    smallest factor, layer_decay ** (L + 1)."""
    stacks = find_layer_stacks(model) if layer_decay != 1.0 else []
    deepest = max((len(layers) for _, layers in stacks), default=0)
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if stacks:  # per stack: an encoder-decoder's encoder and decoder each decay from their top
            idx = [(i, len(layers)) for n, layers in stacks if (i := layer_index(name, n)) is not None]
            if idx:
                i, n_layers = idx[0]
                scale = layer_decay ** (n_layers - i)
            elif "embed" in name or name.endswith("shared.weight"):
                scale = layer_decay ** (deepest + 1)
        wd = 0.0 if _no_decay(name, p) else weight_decay
        groups.setdefault((lr * scale, wd), []).append(p)
    return [{"params": ps, "lr": glr, "initial_lr": glr, "weight_decay": wd}
            for (glr, wd), ps in groups.items()]


def enable_checkpointing(model: nn.Module, on: bool) -> None:
    """Recompute activations in backward (non-reentrant: works with frozen inputs and peft)."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def config_from_hparams(config_cls, hparams: dict):
    """Build a technique config from the hparams keys that name its fields (others ignored)."""
    names = {f.name for f in fields(config_cls)}
    return config_cls(**{k: v for k, v in hparams.items() if k in names})
