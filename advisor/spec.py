"""The shared vocabulary of the advisor: model architecture facts, hardware, and a training setup.

Plain dataclasses, no torch. The catalog (rules/models.toml), a local config.json and the Hub all
produce a `ModelSpec`; the probe and the GPU table produce a `Hardware`; the estimator reads a
`ModelSpec` and a `TrainSetup` and returns an `Estimate`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from autoft.errors import AutoftError

Technique = Literal["full", "freeze", "lora", "qlora"]
Precision = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw-8bit", "paged-adamw-8bit"]
Task = Literal["classification", "generation", "summarization", "translation"]

TECHNIQUES: tuple[str, ...] = ("full", "freeze", "lora", "qlora")
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw-8bit", "paged-adamw-8bit")
TASKS: tuple[str, ...] = ("classification", "generation", "summarization", "translation")
# Tasks that map a source text to a target text: an encoder-decoder reads the source with its
# encoder and writes the target with its decoder; a decoder reads both as one instruction prompt.
SEQ2SEQ_TASKS: tuple[str, ...] = ("summarization", "translation")
FAMILIES: tuple[str, ...] = ("encoder", "decoder", "encoder-decoder")
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")  # data parallelism over several processes


# One wording for the checks that Question, TrainSetup, RunOptions, SearchSettings and the Trial
# all make on the same fields.
def check_choice(what: str, value, choices: tuple[str, ...]) -> None:
    """Refuse a value outside `choices`: "unknown technique 'sgd'; use one of full, freeze, ..."."""
    if value not in choices:
        raise AutoftError(f"unknown {what} {value!r}", "use one of " + ", ".join(choices))


def check_at_least(flag: str, value, low: int, fix: str | None = None) -> None:
    """Refuse a number below `low` (None passes: not given)."""
    if value is not None and value < low:
        raise AutoftError(f"{flag} must be at least {low}, got {value}", fix or f"pass {flag} {max(low, 1)} or more")


@dataclass
class ModelSpec:
    """Architecture numbers of one checkpoint (from its published config.json) and its metadata."""

    id: str  # Hub id, or a local path
    model_type: str  # config.json "model_type": bert, roberta, llama, qwen2, mistral, gemma2, phi3, ...
    params: int  # total parameter count
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tied_embeddings: bool = False
    family: Literal["encoder", "decoder", "encoder-decoder"] = "decoder"
    head_dim: int | None = None  # when config.json sets it apart from hidden/heads (Gemma 2, T5's d_kv)
    languages: list[str] = field(default_factory=lambda: ["en"])
    domains: list[str] = field(default_factory=lambda: ["general"])
    licence: str = "unknown"
    gated: bool = False
    downloads: int | None = None  # from the Hub, when known
    source: str = "catalog"  # catalog | hub | local | cache
    # False: `params` was counted from config.json by generic rules (a model type autoft does not
    # know) and could not be checked against the weights (safetensors headers or index, the Hub)
    params_verified: bool = True
    # encoder-decoder only: num_layers counts the encoder's blocks, this the decoder's
    num_decoder_layers: int | None = None
    # the MLP is gated (T5 v1.1 / Flan-T5 / mT5 "gated-gelu"); None: known from model_type
    gated_mlp: bool | None = None

    def __post_init__(self) -> None:
        for name in ("params", "hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
                     "intermediate_size", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise AutoftError(f"model {self.id}: {name} must be positive",
                                  "check the model's config.json")
        if self.family not in FAMILIES:
            raise AutoftError(f"model {self.id}: family must be encoder, decoder or encoder-decoder")
        if self.family == "encoder-decoder" and self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers  # T5, BART and Marian configs default to equal stacks

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GPU:
    """One accelerator, probed or planned for."""

    name: str
    memory_bytes: int  # total memory
    free_bytes: int | None = None  # probed only
    bf16: bool = True  # compute capability >= 8.0
    compute_capability: str | None = None
    uuid: str | None = None
    mig: bool = False


@dataclass
class Hardware:
    """What training will run on: GPUs (possibly planned, not present) or the CPU."""

    kind: Literal["gpu", "cpu"]
    gpus: list[GPU] = field(default_factory=list)
    cpu_cores: int = 1
    ram_bytes: int = 0
    driver_version: str | None = None
    cuda_version: str | None = None
    source: Literal["probe", "table", "manual", "none"] = "probe"
    reason: str | None = None  # why no GPU is used, when kind == "cpu"

    @property
    def gpu(self) -> GPU | None:
        return self.gpus[0] if self.gpus else None

    @property
    def memory_bytes(self) -> int:
        """Memory that one training process may use: the GPU's (free if probed), else the RAM."""
        if self.gpu is None:
            return self.ram_bytes
        g = self.gpu
        return g.free_bytes if g.free_bytes is not None else g.memory_bytes

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainSetup:
    """Everything about a training run that moves peak memory."""

    technique: Technique = "lora"
    task: Task = "generation"
    batch_size: int = 1  # micro-batch per device
    seq_len: int = 512
    precision: Precision = "bf16"
    gradient_checkpointing: bool = False
    optimizer: Optimizer = "adamw"
    lora_rank: int = 16
    lora_targets: Literal["attention", "qkvo", "all-linear"] = "all-linear"  # attention: q, v
    freeze_layers: int | None = None  # freeze: bottom layers kept frozen (None: all but the top quarter)
    num_labels: int = 2  # classification head width
    # summarization/translation on an encoder-decoder: decoder (target) length in tokens, while
    # seq_len is the encoder (source) length. None: as long as seq_len. Decoders read source and
    # target as one sequence of seq_len tokens.
    target_len: int | None = None
    attention: Literal["sdpa", "eager"] = "sdpa"
    chunked_loss: bool = False
    device: Literal["cuda", "cpu"] = "cuda"
    # micro-batches per optimizer step; None: not known yet (the advisor sizes the micro-batch
    # first), counted as accumulating: gradients of earlier micro-batches live through the forward
    grad_accum: int | None = None

    def __post_init__(self) -> None:
        check_choice("technique", self.technique, TECHNIQUES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("task", self.task, TASKS)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--seq-len", self.seq_len, 8, fix="pass --seq-len 128 or more")
        check_at_least("--target-len", self.target_len, 1, fix="pass --target-len 64 or more")
        check_at_least("--lora-rank", self.lora_rank, 1, fix="pass --lora-rank 8, 16 or 64")
        check_at_least("--freeze-layers", self.freeze_layers, 0, fix="pass the number of bottom layers to freeze")
        check_at_least("--grad-accum", self.grad_accum, 1)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Estimate:
    """Predicted peak memory of one training setup, by term, in bytes (GiB in to_dict)."""

    peak_bytes: int
    breakdown_bytes: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 1024**3

    def to_dict(self) -> dict:
        return {
            "peak_gib": round(self.peak_gib, 3),
            "breakdown_gib": {k: round(v / 1024**3, 3) for k, v in self.breakdown_bytes.items()},
            "notes": list(self.notes),
        }
