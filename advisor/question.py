"""What the user tells the advisor: their situation and any choices they want to fix themselves.

Field help text (metadata["help"]) feeds both the CLI's --help (autoft/cli/_flags.py) and the TUI's
labels, so the two never disagree. A field left at None is for the advisor to choose.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autoft.advisor.spec import (OPTIMIZERS, PRECISIONS, SEQ2SEQ_TASKS, STRATEGIES, TASKS,  # noqa: F401
                                 TECHNIQUES, check_at_least, check_choice)
from autoft.errors import AutoftError

CLASS_WEIGHTS = ("auto", "balanced", "none")
METRICS = ("accuracy", "macro_f1", "micro_f1", "loss")


def _f(default: Any, help: str, flag: str | None = None, choices: tuple | None = None,
       metavar: str | None = None, group: str = "situation") -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                            "metavar": metavar, "group": group})


@dataclass
class Question:
    # -- the situation -------------------------------------------------------------------------
    task: str | None = _f(None, "what to train: classification (text -> label), generation "
                          "(instruction tuning), summarization (document -> summary) or translation "
                          "(source -> target language); inferred from the data's columns when omitted",
                          choices=TASKS)
    domain: str = _f("general", "subject area of the texts: general, biomedical, scientific, legal, "
                     "finance, code, ...", metavar="DOMAIN")
    language: str = _f("en", "main language of the texts, as an ISO 639-1 code (en, de, fr, ...; "
                       "multi for several)", metavar="CODE")
    source_lang: str | None = _f(None, "translation: language translated from, as an ISO 639-1 code "
                                 "(en, de, ...; read from the data's pair column or column names)",
                                 metavar="CODE")
    target_lang: str | None = _f(None, "translation: language translated into, as an ISO 639-1 code",
                                 metavar="CODE")
    data_size: int | None = _f(None, "number of training examples (read from --data when given)",
                               metavar="N")
    num_labels: int | None = _f(None, "number of classes (classification; read from --data)",
                                metavar="N", group="hidden")
    seq_len_p95: int | None = _f(None, "95th percentile of example length in tokens (read from --data)",
                                 metavar="TOKENS", group="hidden")
    seq_len_p99: int | None = _f(None, "99th percentile of example length in tokens (read from --data)",
                                 metavar="TOKENS", group="hidden")
    seq_len_mean: int | None = _f(None, "mean example length in tokens (read from --data; predicts "
                                  "training speed)", metavar="TOKENS", group="hidden")
    imbalance_ratio: float | None = _f(None, "train rows of the largest class over the smallest "
                                       "(multi-label: of the most over the least frequent label; "
                                       "read from --data)", metavar="RATIO", group="hidden")
    majority_share: float | None = _f(None, "share of train rows in the largest class, 0-1 "
                                      "(single-label; read from --data)", metavar="SHARE", group="hidden")
    multi_label: bool | None = _f(None, "several labels per row (read from --data)", group="hidden")
    target_len_p95: int | None = _f(None, "summarization/translation: 95th percentile of target "
                                    "length in tokens (read from --data)", metavar="TOKENS", group="hidden")
    target_len_p99: int | None = _f(None, "summarization/translation: 99th percentile of target "
                                    "length in tokens (read from --data)", metavar="TOKENS", group="hidden")
    gpu: str = _f("auto", "hardware to plan for: auto (probe this machine), cpu, or a GPU name from "
                  "the table (A100-80GB, H100-80GB, L4, T4, RTX-4090, ...)", metavar="auto|cpu|NAME",
                  group="hardware")
    gpu_memory: str | None = _f(None, "plan for a GPU with this much memory, e.g. 24GiB (overrides "
                                "the probed or named GPU's memory)", metavar="SIZE", group="hardware")
    gpus: int = _f(1, "GPUs per machine to plan for and train on: N > 1 trains with N processes (DDP, or "
                   "FSDP when only the sharded plan fits; memory is per GPU)", metavar="N", group="hardware")
    processes: int | None = _f(None, "training processes per machine (data parallel) on what --gpu says: with "
                               "--gpu cpu, N CPU processes on gloo; on GPUs the default is --gpus", metavar="N",
                               group="hardware")
    nnodes: int = _f(1, "machines with --gpus GPUs each (autoft run: also --node-rank and --rdzv-endpoint); "
                     "FSDP shards over all of their processes", metavar="M", group="hardware")
    gpus: int = _f(1, "number of GPUs to plan for (data parallel; memory is per GPU)", metavar="N",
                   group="hardware")
    gpus_per_trial: float | None = _f(None, "share of one GPU each search trial gets, e.g. 0.5: two trials per "
                                      "GPU (--search-backend ray); the memory plan is for that share",
                                      metavar="SHARE", group="hardware")
    # -- choices the user may fix (None: the advisor decides) ----------------------------------
    model: str | None = _f(None, "model to fine-tune: a Hub id, a local folder, a config.json or a "
                           ".gguf file", metavar="ID|PATH", group="override")
    technique: str | None = _f(None, "full, freeze (train the top layers), lora or qlora",
                               choices=TECHNIQUES, group="override")
    batch_size: int | None = _f(None, "micro-batch size per GPU", metavar="N", group="override")
    gradient_accumulation_steps: int | None = _f(None, "micro-batches per optimizer step",
                                                 metavar="N", group="override")
    seq_len: int | None = _f(None, "maximum sequence length in tokens", metavar="TOKENS",
                             group="override")
    precision: str | None = _f(None, "bf16, fp16 or fp32 (fp32 on the CPU)", choices=PRECISIONS,
                               group="override")
    strategy: str | None = _f(None, "with several processes: ddp (a full replica per GPU) or fsdp (weights, "
                              "gradients and optimizer states sharded)", choices=STRATEGIES, group="override")
    gradient_checkpointing: bool | None = _f(None, "recompute activations in the backward pass "
                                             "(saves memory, costs about 30%% more time)",
                                             group="override")
    optimizer: str | None = _f(None, "adamw, adamw-8bit or paged-adamw-8bit", choices=OPTIMIZERS,
                               group="override")
    lora_rank: int | None = _f(None, "LoRA rank r (alpha is 2r)", metavar="R", group="override")
    freeze_layers: int | None = _f(None, "freeze: number of bottom layers kept frozen", metavar="K",
                                   group="override")
    class_weights: str | None = _f(None, "classification loss: balanced weighs each class by "
                                   "rows / (classes x its rows) (multi-label: each label's positives by "
                                   "negatives / positives); none is plain cross-entropy; auto (default) lets "
                                   "the advisor turn it on for heavy imbalance", choices=CLASS_WEIGHTS,
                                   group="override")
    metric: str | None = _f(None, "validation metric the search and early stopping rank by: accuracy, "
                            "macro_f1, micro_f1 (multi-label) or loss; default: the advisor's choice "
                            "(macro_f1 for imbalanced classes)", choices=METRICS, group="override")
    force: bool = _f(False, "accept an override that the advisor predicts will not fit",
                     group="override")
    trust_remote_code: bool = _f(False, "allow a model's own Python code from the Hub to run "
                                 "(off by default: it executes code you have not read)",
                                 group="override")

    def __post_init__(self) -> None:
        for name in ("data_size", "batch_size", "gradient_accumulation_steps", "seq_len", "lora_rank", "gpus",
                     "processes", "nnodes"):
            check_at_least("--" + name.replace("_", "-"), getattr(self, name), 0 if name == "data_size" else 1)
        for name, choices in (("task", TASKS), ("technique", TECHNIQUES), ("precision", PRECISIONS),
                              ("optimizer", OPTIMIZERS), ("class weights", CLASS_WEIGHTS), ("metric", METRICS),
                              ("strategy", STRATEGIES)):
            attr = name.replace(" ", "_")
            if getattr(self, attr) is not None:
                check_choice(name, getattr(self, attr), choices)
        for name in ("source_lang", "target_lang"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v.strip().lower() or None)
        if self.source_lang and self.source_lang == self.target_lang:
            raise AutoftError(f"--source-lang and --target-lang are both {self.source_lang!r}",
                              "translation needs two different languages")
        if self.gpus_per_trial is not None and not 0 < self.gpus_per_trial <= 1:
            raise AutoftError(f"--gpus-per-trial must be above 0 and at most 1, got {self.gpus_per_trial:g}",
                              "a trial trains on one GPU: pass e.g. 0.5 for two trials per GPU, or 1")
        self.language = (self.language or "en").lower()
        self.domain = (self.domain or "general").lower()

    def to_dict(self) -> dict:
        return asdict(self)

    def world_size(self, kind: str) -> int:
        """Training processes in all on `kind` hardware ("gpu" or "cpu"): per machine (--processes,
        else --gpus on GPUs, else 1) x machines."""
        per_node = self.processes or (self.gpus if kind == "gpu" else 1)
        return per_node * (self.nnodes or 1)

    @classmethod
    def field_help(cls) -> dict[str, dict]:
        """name -> metadata (help, choices, metavar, group): one source for CLI flags and TUI labels."""
        return {f.name: dict(f.metadata) for f in fields(cls)}


def fill_unset(given: dict, facts: dict) -> dict:
    """`given` (Question fields) with each field it leaves unset taken from `facts`, e.g.
    DataProfile.to_question_fields(): what the user says wins over what the data says.
    `autoft advise --data`, `autoft run` and the TUI all merge through here."""
    names = {f.name for f in fields(Question)}
    out = dict(given)
    for k, v in (facts or {}).items():
        if k in names and v is not None and out.get(k) is None:
            out[k] = v
    return out
