"""Recommendations: which model, which technique, which batch size, and will it fit.

    advise(question, hardware=None, catalog=None) -> Recommendation

The decisions are made by the rules in rules/advice.toml (autoft.advisor.rules_engine); this module
only computes facts, runs the rule stages, and does the arithmetic the rules cannot: fit checks
with the memory estimator, the largest micro-batch under a safety margin, the accumulation that
reaches the effective batch, and the sequence length from the data's token-length percentiles.

Order of work:
  1. facts of the situation and the hardware;
  2. `model` rules score (or reject) every candidate; candidates are ranked by score, then Hub
     downloads, then catalog order;
  3. per candidate, in rank order: `setup` rules for each technique, a fit check of each (batch 1,
     checkpointing on), `technique` rules pick the first preferred technique that fits; then the
     batch size, checkpointing and accumulation;
  4. the first candidate with a fitting plan wins; the next ones (and the winner's other fitting
     techniques) become the alternatives.
Overrides (any field of the Question) fix that choice; the fit is re-checked and an override that
does not fit is refused with the nearest setting that does, unless `question.force`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from autoft.advisor import sharding
from autoft.advisor.question import Question
from autoft.advisor.rules_engine import Outcome, load_rules, nice
from autoft.advisor.spec import SEQ2SEQ_TASKS, TECHNIQUES, Estimate, Hardware, ModelSpec, TrainSetup
from autoft.advisor.units import GIB
from autoft.errors import AutoftError

SAFETY = {"gpu": 0.9, "cpu": 0.8}  # plan under this share of memory (RAM also holds the OS and data)
DEFAULT_SEQ_LEN = {"classification": 256, "generation": 1024,  # when the data's lengths are unknown
                   "summarization": 512, "translation": 128}
# summarization/translation: target length when the data's is unknown, and the tokens a decoder's
# instruction prompt ("Translate the following text from English to German." + template) adds
DEFAULT_TARGET_LEN = {"summarization": 128, "translation": 128}
PROMPT_OVERHEAD = 32
MAX_BATCH_SEARCH = 256  # the largest micro-batch the fit search looks for
SCHEMA_VERSION = 1
# How the trainer reads each search-space entry (documented in docs/advise-json.md).
SEARCH_SPACE_KINDS = {"learning_rate": "log-range", "weight_decay": "range", "warmup_ratio": "range",
                      "layer_decay": "range", "lora_rank": "choices", "lora_dropout": "choices",
                      "model_dropout": "choices"}
# Validation metrics the search can rank by (the keys of Trial.evaluate()) -> higher is better.
METRICS = {"accuracy": True, "macro_f1": True, "micro_f1": True, "loss": False, "eval_loss": False}
_MLP_MODULES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "dense", "fc1", "fc2", "lin1",
                "lin2", "c_fc", "Wi", "dense_h_to_4h", "dense_4h_to_h", "w1", "w2", "w3",
                "wi", "wi_0", "wi_1", "wo"}  # the last four: T5's MLP


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------

@dataclass
class Recommendation:
    """What to fine-tune and how; `to_dict()` is the stable JSON of `autoft advise --json`."""

    model: dict  # ModelSpec.to_dict(): id, params, languages, domains, licence, family, model_type, ...
    technique: str
    # Defaults below are what a hand-written recommendation (only model and technique, say) trains
    # with; the advisor always sets every field.
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    effective_batch_size: int = 0
    seq_len: int = 128
    precision: str = "bf16"  # the trainer uses fp32 on the CPU whatever this says
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    lora: dict | None = None  # {r, alpha, dropout, target_modules}
    freeze_layers: int | None = None
    estimate: dict = field(default_factory=dict)  # Estimate.to_dict(): peak_gib, breakdown_gib, notes
    fits: bool = True  # predicted peak <= safety x memory_gib
    memory_gib: float = 0.0  # memory per device it planned against
    safety: float = SAFETY["gpu"]
    max_batch_size: int = 0  # largest micro-batch that fits (0: not even 1), before the caps
    gpu: dict = field(default_factory=dict)  # kind, name, memory_gib, bf16, count, source, cpu_cores, ram_gib, reason
    reasons: list[dict] = field(default_factory=list)  # {rule, because, facts}
    alternatives: list[dict] = field(default_factory=list)
    search_space: dict = field(default_factory=dict)
    task: str | None = None
    num_labels: int | None = None
    warnings: list[str] = field(default_factory=list)
    # summarization/translation on an encoder-decoder: decoder length in tokens (seq_len is the
    # encoder's); a decoder reads source and target within seq_len
    target_len: int | None = None
    question: dict = field(default_factory=dict)
    class_weights: str = "none"  # classification loss: balanced | none (autotrain/imbalance.py)
    metric: str | None = None  # validation metric the search ranks by (a key of Trial.evaluate())
    metric_higher_is_better: bool = True
    trust_remote_code: bool = False
    # several processes (--gpus N, --processes N, --nnodes M): how they share the work (ddp or
    # fsdp; None for one process); the estimate and batch size are then per GPU
    strategy: str | None = None
    world_size: int = 1
    schema_version: int = SCHEMA_VERSION
    # predicted speed of this setting (advisor/speed.py): examples_per_s, step_s, epoch_s,
    # tokens_per_example, how it was assumed, the efficiency assumed and its source; None when
    # the GPU has no throughput figures
    speed: dict | None = None

    @property
    def spec(self) -> ModelSpec:
        known = {f.name for f in fields(ModelSpec)}
        return ModelSpec(**{k: v for k, v in self.model.items() if k in known})

    @property
    def peak_gib(self) -> float:
        return float(self.estimate.get("peak_gib", 0.0))

    def train_setup(self) -> TrainSetup:
        """The TrainSetup this recommendation was estimated with."""
        return _train_setup(self.technique, self.task, self.batch_size, self.seq_len, self.precision,
                            self.gradient_checkpointing, self.optimizer,
                            (self.lora or {}).get("r", 16), (self.lora or {}).get("target_modules", "all-linear"),
                            self.freeze_layers, self.num_labels, "cpu" if self.gpu.get("kind") == "cpu" else "cuda",
                            target_len=self.target_len)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recommendation":
        """Read `to_dict()` output back (e.g. recommendation.json); unknown keys are ignored."""
        if not isinstance(d, dict) or "model" not in d or "technique" not in d:
            raise AutoftError("this is not an autoft recommendation (no model or technique)",
                              "pass the output of `autoft advise --json`")
        if int(d.get("schema_version", 1)) > SCHEMA_VERSION:
            raise AutoftError(f"recommendation schema {d['schema_version']} is newer than this autoft "
                              f"reads ({SCHEMA_VERSION})", "upgrade autoft")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        if not isinstance(kw["model"], dict):  # a bare id or path
            kw["model"] = {"id": str(kw["model"])}
        if not kw["model"].get("id"):
            raise AutoftError("the recommendation's model has no id", "give model as {\"id\": ...} or a string")
        return cls(**kw)

    @property
    def model_id(self) -> str:
        return str(self.model["id"])


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _round_seq(n: int) -> int:
    """Round a token count up: to a multiple of 8 up to 128, of 64 above (tensor-core friendly)."""
    n = max(int(math.ceil(n)), 16)
    step = 8 if n <= 128 else 64
    return int(math.ceil(n / step) * step)


def _train_setup(technique, task, batch, seq_len, precision, ckpt, optimizer, lora_r, targets,
                 freeze_layers, num_labels, device, target_len: int | None = None) -> TrainSetup:
    if isinstance(targets, list):
        scope = "all-linear" if set(targets) & _MLP_MODULES else "attention"
    else:
        scope = "all-linear"
    return TrainSetup(technique=technique, task=task, batch_size=max(1, int(batch)), seq_len=int(seq_len),
                      precision=precision, gradient_checkpointing=bool(ckpt), optimizer=optimizer,
                      lora_rank=int(lora_r), lora_targets=scope, freeze_layers=freeze_layers,
                      num_labels=int(num_labels or 2), device=device, target_len=target_len)


def _catalog_extra(model_id: str) -> dict:
    from autoft.advisor.catalog import catalog_extra

    return catalog_extra(model_id)


def _model_tasks(spec: ModelSpec) -> list[str]:
    from autoft.advisor.catalog import model_tasks

    return model_tasks(spec)


def _gib(b: float) -> float:
    return round(b / GIB, 2)


def _knows(language: str, languages: list[str]) -> bool:
    langs = [x.lower() for x in languages]
    return language in langs or "multi" in langs or (language == "multi" and len(langs) > 3)


def _gpu_summary(hw: Hardware) -> dict:
    g = hw.gpu
    return {
        "kind": hw.kind,
        "name": g.name if g else "CPU",
        "memory_gib": round(hw.memory_bytes / GIB, 2),
        "bf16": bool(g.bf16) if g else False,
        "count": len(hw.gpus) if hw.kind == "gpu" else 0,
        "source": hw.source,
        "cpu_cores": hw.cpu_cores,
        "ram_gib": round(hw.ram_bytes / GIB, 1),
        "reason": hw.reason,
    }


def _reason(rule: str, because: str, **facts: Any) -> dict:
    return {"rule": rule, "because": because, "facts": facts}


# ---------------------------------------------------------------------------------------------
# One (model, technique) plan
# ---------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    spec: ModelSpec
    technique: str
    setup: TrainSetup  # final micro-batch and checkpointing
    outcome: Outcome  # setup-stage rules
    est: Estimate
    fits: bool
    max_batch: int
    accumulation: int
    lora: dict | None
    reasons: list[dict]
    search_space: dict
    effective: int = 0
    speed: Any = None  # speed.SpeedPrediction of this setting, or None
    strategy: str | None = None


class _Advisor:
    def __init__(self, q: Question, hw: Hardware, catalog: list[ModelSpec] | None,
                 fixed_model: ModelSpec | None = None):
        from autoft.advisor import memory

        self.q, self.hw, self.mem = q, hw, memory
        self.rules = load_rules()
        self.catalog = catalog
        self.warnings: list[str] = []
        self.fixed_model = fixed_model
        if q.task is not None:
            self.task = q.task
        elif fixed_model is not None and fixed_model.family == "encoder-decoder":
            self.task = "summarization"
            self.warnings.append("task not given: assumed summarization for an encoder-decoder model "
                                 "(pass --task translation, or --data)")
        elif fixed_model is not None and fixed_model.family == "decoder":
            self.task = "generation"
            self.warnings.append("task not given: assumed generation for a decoder model "
                                 "(pass --task classification, or --data)")
        else:
            self.task = "classification"
            self.warnings.append("task not given: assumed classification (pass --task generation, or --data)")
        if fixed_model is not None and self.task != "classification" and fixed_model.family == "encoder":
            raise AutoftError(f"{fixed_model.id} is an encoder: it cannot be fine-tuned to generate text",
                              "pick a decoder model (--model), or use --task classification")
        if self.task == "translation" and not (q.source_lang and q.target_lang):
            raise AutoftError("translation needs the two languages", "pass --source-lang and --target-lang, "
                              "or --data with a translation column")
        self.kind = hw.kind
        self.safety = SAFETY[self.kind]
        mem = hw.memory_bytes or (8 * GIB)
        # A search trial that gets a share of a GPU (--gpus-per-trial 0.5: two trials per GPU)
        # must fit in that share: the plan is per trial.
        self.share = float(q.gpus_per_trial) if self.kind == "gpu" and q.gpus_per_trial else 1.0
        self.memory = int(mem * self.share)
        name = _gpu_summary(hw)["name"]
        self.where = (f"{self.memory / GIB:.1f} GiB on {name}" if self.share == 1.0 else
                      f"{self.memory / GIB:.1f} GiB, the {self.share:g} share of {name}'s {mem / GIB:.1f} GiB "
                      "each trial gets")
        if q.gpus_per_trial and self.kind != "gpu":
            self.warnings.append("--gpus-per-trial applies to GPUs: planning for this CPU's memory as a whole")
        self.budget = self.safety * self.memory
        self.device = "cpu" if self.kind == "cpu" else "cuda"
        # data-parallel processes in all; each GPU (or, on the CPU, its share of the RAM) holds one
        self.world = q.processes * (q.nnodes or 1) if q.processes else (
            max(1, len(hw.gpus)) * (q.nnodes or 1) if self.kind == "gpu" else q.nnodes or 1)
        if self.kind == "cpu" and self.world > 1:
            mem = mem / (q.processes or 1)  # the processes of one machine share its RAM
            self.memory = int(mem)
            self.budget = self.safety * self.memory
        # (model id, technique) -> (strategy, its reason), decided by the `strategy` rules
        self.strategies: dict[tuple[str, str], tuple[str, dict]] = {}
        g = hw.gpu
        language = q.source_lang if self.task == "translation" else q.language
        self.base = {
            "task": self.task, "domain": q.domain, "language": language, "data_size": q.data_size,
            "source_lang": q.source_lang, "target_lang": q.target_lang,
            "target_len_p95": q.target_len_p95, "target_len_p99": q.target_len_p99,
            "num_labels": q.num_labels, "seq_len_p95": q.seq_len_p95, "seq_len_p99": q.seq_len_p99,
            "hw_kind": self.kind, "gpu_name": g.name if g else None,
            "gpu_count": len(hw.gpus) if self.kind == "gpu" else 0,
            "gpu_bf16": bool(g.bf16) if g else False,
            "memory_gib": nice(self.memory / GIB), "budget_gib": nice(self.budget / GIB),
            "cpu_cores": hw.cpu_cores, "ram_gib": nice(hw.ram_bytes / GIB) if hw.ram_bytes else None,
            "imbalance_ratio": q.imbalance_ratio, "majority_share": q.majority_share,
            "multi_label": q.multi_label,
            "world_size": self.world,
        }
        self.seq_wanted, self.seq_reason = self._seq_wanted()
        self.target_wanted, self.target_reason = self._target_wanted()

    # -- facts -----------------------------------------------------------------------------------
    def _seq_wanted(self) -> tuple[int, dict]:
        q = self.q
        if q.seq_len:
            return q.seq_len, _reason("OVERRIDE", f"sequence length {q.seq_len} tokens (you set it)", seq_len=q.seq_len)
        if q.seq_len_p99:
            n, src = q.seq_len_p99, f"99% of your examples are at most {q.seq_len_p99} tokens"
        elif q.seq_len_p95:
            n, src = q.seq_len_p95, f"95% of your examples are at most {q.seq_len_p95} tokens"
        else:
            n = DEFAULT_SEQ_LEN[self.task]
            src = f"example lengths unknown (no --data): {n} tokens, the default for {self.task}"
        return _round_seq(n), _reason("SEQ-LEN", src + "; rounded up to a multiple of 8 (64 above 128)",
                                      seq_len_p95=q.seq_len_p95, seq_len_p99=q.seq_len_p99)

    def _target_wanted(self) -> tuple[int | None, dict | None]:
        """Summarization/translation: the target (decoder) length, from the targets' percentiles."""
        q = self.q
        if self.task not in SEQ2SEQ_TASKS:
            return None, None
        if q.target_len_p99:
            n, src = q.target_len_p99, f"99% of your targets are at most {q.target_len_p99} tokens"
        elif q.target_len_p95:
            n, src = q.target_len_p95, f"95% of your targets are at most {q.target_len_p95} tokens"
        else:
            n = DEFAULT_TARGET_LEN[self.task]
            src = f"target lengths unknown (no --data): {n} tokens, the default for {self.task}"
        return _round_seq(n), _reason("TARGET-LEN", src + "; the decoder's length, rounded up like the "
                                      "source's; a decoder model reads source, target and a prompt of about "
                                      f"{PROMPT_OVERHEAD} tokens as one sequence", target_len_p95=q.target_len_p95,
                                      target_len_p99=q.target_len_p99)

    def model_facts(self, spec: ModelSpec) -> dict:
        f = dict(self.base)
        wanted = self.seq_wanted
        if self.target_wanted and spec.family == "decoder" and not self.q.seq_len:
            wanted = _round_seq(self.seq_wanted + self.target_wanted + PROMPT_OVERHEAD)
        seq = wanted if self.q.seq_len else min(wanted, spec.max_positions)
        langs = [x.lower() for x in spec.languages]
        src, tgt = self.q.source_lang, self.q.target_lang
        pair = bool(src and tgt and _knows(src, langs) and _knows(tgt, langs))
        f.update({
            "knows_pair": pair,
            "translates_pair": bool(src and tgt and f"{src}-{tgt}" in _catalog_extra(spec.id).get("translates", [])),
            "pair_specific": bool(src and tgt and sorted(langs) == sorted({src, tgt})
                                  and f"{src}-{tgt}" in _catalog_extra(spec.id).get("translates", [])),
            "model_tasks": _model_tasks(spec),
            "target_len_wanted": self.target_wanted,
            "target_len": None if self.target_wanted is None else min(self.target_wanted, spec.max_positions),
        })
        f.update({
            "model": spec.id, "params": spec.params, "params_b": nice(spec.params / 1e9),
            "family": spec.family, "model_type": spec.model_type,
            "languages": list(spec.languages), "domains": list(spec.domains),
            "knows_language": pair if self.task == "translation" else _knows(self.q.language, spec.languages),
            "domain_match": self.q.domain in [d.lower() for d in spec.domains],
            "gated": bool(spec.gated), "max_positions": spec.max_positions,
            "seq_len_wanted": wanted, "seq_len": seq,
        })
        return f

    # -- setup of one technique -------------------------------------------------------------------
    def _setup_for(self, spec: ModelSpec, facts: dict, technique: str) -> tuple[Outcome, dict]:
        """Setup-stage rules for one technique, with the user's overrides on top."""
        q = self.q
        out = self.rules.run("setup", {**facts, "technique": technique})
        v = out.values
        lora_r = q.lora_rank or v.get("lora_r", 16)
        freeze = None
        if technique == "freeze":
            freeze = q.freeze_layers if q.freeze_layers is not None else int(
                min(spec.num_layers - 1, round(spec.num_layers * v.get("freeze_fraction", 0.75))))
        choice = {
            "precision": q.precision or v.get("precision", "fp32" if self.kind == "cpu" else "fp16"),
            "optimizer": q.optimizer or v.get("optimizer", "adamw"),
            "ckpt": q.gradient_checkpointing if q.gradient_checkpointing is not None
            else bool(v.get("gradient_checkpointing", False)),
            "lora_r": int(lora_r),
            "targets": v.get("lora_targets", "all-linear"),
            "freeze": freeze,
            "seq_len": facts["seq_len"],
            # an encoder-decoder's decoder length (a decoder reads everything within seq_len)
            "target_len": facts.get("target_len") if spec.family == "encoder-decoder" else None,
        }
        return out, choice

    def _setup(self, technique: str, c: dict, batch: int, ckpt: bool | None = None,
               seq_len: int | None = None) -> TrainSetup:
        return _train_setup(technique, self.task, batch, seq_len or c["seq_len"], c["precision"],
                            c["ckpt"] if ckpt is None else ckpt, c["optimizer"], c["lora_r"], c["targets"],
                            c["freeze"], self.q.num_labels, self.device, target_len=c.get("target_len"))

    def _strategy(self, spec: ModelSpec, technique: str) -> str | None:
        return self.strategies.get((spec.id, technique), ("ddp", {}))[0] if self.world > 1 else None

    def _peak(self, spec: ModelSpec, setup: TrainSetup) -> Estimate:
        """Peak memory of one GPU (one process's share of the RAM on the CPU)."""
        if self.world == 1:
            return self.mem.estimate(spec, setup)
        return sharding.per_gpu_estimate(spec, setup, self.world, self._strategy(spec, setup.technique))

    def _max_batch(self, spec: ModelSpec, setup: TrainSetup) -> int:
        return sharding.max_batch_size(spec, setup, self.world, self._strategy(spec, setup.technique) or "ddp",
                                       self.memory, safety=self.safety, limit=MAX_BATCH_SEARCH)

    def choose_strategy(self, spec: ModelSpec, setup: TrainSetup) -> None:
        """Several processes: estimate DDP and FSDP per GPU for `setup` (micro-batch 1) and let the
        `strategy` rules (or --strategy) choose; remembered for this model and technique."""
        q, key = self.q, (spec.id, setup.technique)
        ddp = sharding.per_gpu_estimate(spec, setup, self.world, "ddp")
        refused = sharding.fsdp_refusal(setup)
        fsdp = None if refused else sharding.per_gpu_estimate(spec, setup, self.world, "fsdp")
        facts = {**self.base, "technique": setup.technique, "fits_ddp": ddp.peak_bytes <= self.budget,
                 "fits_fsdp": fsdp is not None and fsdp.peak_bytes <= self.budget,
                 "ddp_gib": round(ddp.peak_gib, 2), "fsdp_gib": round(fsdp.peak_gib, 2) if fsdp else None,
                 "fsdp_refused": refused}
        if q.strategy:
            if q.strategy == "fsdp" and refused:  # this technique is out (an error if you chose it)
                raise AutoftError(refused, "pass --strategy ddp, or another --technique")
            self.strategies[key] = (q.strategy, _reason("OVERRIDE", f"strategy {q.strategy} (you set it)"))
            return
        out = self.rules.run("strategy", facts)
        if q.technique == setup.technique:
            self.warnings += [f"{w.rule.id}: " + w.reason()["because"] for w in out.warnings]
        self.strategies[key] = (out.get("strategy", "ddp"), out.by["strategy"].reason())

    def min_peak(self, spec: ModelSpec, technique: str, c: dict) -> Estimate | None:
        """Lowest peak of a technique: batch 1, checkpointing on unless the user turned it off.
        None when the technique cannot run here at all (the estimator refuses, e.g. QLoRA on CPU)."""
        ckpt = self.q.gradient_checkpointing is not False
        setup = self._setup(technique, c, 1, ckpt=ckpt)
        try:
            if self.world > 1:
                self.choose_strategy(spec, setup)
            return self._peak(spec, setup)
        except AutoftError:
            if self.q.strategy and self.q.technique == technique:
                raise
            return None

    # -- a full plan ----------------------------------------------------------------------------------
    def plan(self, spec: ModelSpec, facts: dict, technique: str, out: Outcome, c: dict) -> _Plan:
        q, v = self.q, out.values
        reasons: list[dict] = []
        eff_lo, eff_hi = v.get("effective_batch", [16, 32])
        caps = [(int(v.get("max_micro_batch", 32)), out.by["max_micro_batch"].rule.id if "max_micro_batch" in out.by
                 else "default"),
                (int(eff_hi), out.by["effective_batch"].rule.id if "effective_batch" in out.by else "default")]
        if q.data_size:
            caps.append((max(1, q.data_size), "the data size"))
        cap, cap_by = min(caps, key=lambda x: x[0])
        ckpt = c["ckpt"]
        ckpt_fixed = q.gradient_checkpointing is not None
        if q.gradient_checkpointing is not None:
            reasons.append(_reason("OVERRIDE", f"gradient checkpointing {'on' if ckpt else 'off'} (you set it)"))
        else:
            reasons += out.reason_for("gradient_checkpointing")
        need = q.batch_size or 1  # the micro-batch that must fit: the user's, else 1
        if not ckpt and not ckpt_fixed:
            no = self._peak(spec, self._setup(technique, c, need, ckpt=False))
            if no.peak_bytes > self.budget:
                ckpt = True  # fits with it, or fits nowhere (then report the lowest peak)
                if self._peak(spec, self._setup(technique, c, need, ckpt=True)).peak_bytes <= self.budget:
                    by = out.by.get("gradient_checkpointing")
                    reasons = [r for r in reasons if by is None or r["rule"] != by.rule.id]
                    what = "even batch 1" if need == 1 else f"micro-batch {need}"
                    reasons.append(_reason(
                        "FIT-CKPT", f"gradient checkpointing on: without it {what} needs "
                        f"{no.peak_gib:.1f} GiB, more than the {self.budget / GIB:.1f} GiB budget",
                        peak_gib=round(no.peak_gib, 2), budget_gib=round(self.budget / GIB, 2)))
        batch, ckpt, max_b, reasons = self._batch_and_ckpt(spec, technique, out, c, ckpt, cap, cap_by, eff_lo,
                                                           reasons)
        if q.gradient_accumulation_steps:
            acc = q.gradient_accumulation_steps
        else:
            acc = max(1, math.ceil(eff_lo / (batch * self.world)))
            reasons += out.reason_for("effective_batch")
        setup = self._setup(technique, c, batch, ckpt=ckpt)
        est = self._peak(spec, setup)
        fits = est.peak_bytes <= self.budget
        for key in ("precision", "optimizer"):
            if getattr(q, key):
                reasons.append(_reason("OVERRIDE", f"{key} {getattr(q, key)} (you set it)"))
            else:
                reasons += out.reason_for(key)
        lora = None
        if technique in ("lora", "qlora"):
            alpha = v.get("lora_alpha_ratio", 2) * c["lora_r"]
            lora = {"r": c["lora_r"], "alpha": int(alpha) if float(alpha).is_integer() else alpha,
                    "dropout": v.get("lora_dropout", 0.05), "target_modules": c["targets"]}
            reasons += out.reason_for("lora_targets")
            reasons += out.reason_for("lora_r") if not q.lora_rank else [
                _reason("OVERRIDE", f"LoRA rank {q.lora_rank} (you set it)")]
        if technique == "freeze":
            reasons += out.reason_for("freeze_fraction") if q.freeze_layers is None else [
                _reason("OVERRIDE", f"{q.freeze_layers} bottom layers frozen (you set it)")]
        reasons += out.reason_for("lr_range")
        reasons += out.reason_for("search_model_dropout")
        strategy = self._strategy(spec, technique)
        if strategy:
            reasons.append(self.strategies[(spec.id, technique)][1])
        space = self._search_space(technique, v)
        return _Plan(spec=spec, technique=technique, setup=setup, outcome=out, est=est, fits=fits,
                     max_batch=max_b, accumulation=acc, lora=lora, reasons=reasons, search_space=space,
                     effective=batch * acc * self.world, speed=self._speed(spec, setup, acc),
                     strategy=strategy)

    def _batch_and_ckpt(self, spec: ModelSpec, technique: str, out: Outcome, c: dict, ckpt: bool, cap: int,
                        cap_by: str, eff_lo: int, reasons: list[dict]) -> tuple[int, bool, int, list[dict]]:
        """The micro-batch and checkpointing: the user's, else the largest micro-batch under the caps;
        where SPEED-001 fires, the fitting setting with the most predicted examples per second.
        Returns (micro-batch, checkpointing, largest micro-batch that fits, reasons)."""
        q, v = self.q, out.values
        ckpt_fixed = q.gradient_checkpointing is not None
        max_b = self._max_batch(spec, self._setup(technique, c, 1, ckpt=ckpt))
        batch = q.batch_size or max(1, min(max_b, cap))
        speed_note = None
        if "speed_margin" in v and not (q.batch_size and ckpt_fixed):
            fast = self._fastest(spec, technique, c, ckpt, ckpt_fixed, cap, eff_lo, float(v["speed_margin"]))
            if fast is not None and (fast["batch"], fast["ckpt"]) != (batch, ckpt):
                by = out.by.get("gradient_checkpointing")
                if fast["ckpt"] and not ckpt:
                    reasons = [r for r in reasons if by is None or r["rule"] != by.rule.id]
                batch, ckpt = fast["batch"], fast["ckpt"]
                max_b = self._max_batch(spec, self._setup(technique, c, 1, ckpt=ckpt))
            if fast is not None:
                speed_note = fast
        if q.batch_size:
            reasons.append(_reason("OVERRIDE", f"micro-batch {batch} (you set it)", batch_size=batch))
        else:
            cap_note = f"; capped at {min(max_b, cap)} ({cap_by})" if max_b > min(max_b, cap) else ""
            reasons.append(_reason(
                "FIT-BATCH", f"largest micro-batch under {int(self.safety * 100)}% of "
                f"{self.memory / GIB:.1f} GiB is {max_b}"
                f"{' with checkpointing' if ckpt and not ckpt_fixed and speed_note else ''}{cap_note}",
                max_batch_size=max_b, memory_gib=round(self.memory / GIB, 2), safety=self.safety))
        if speed_note is not None:
            reasons.append(speed_note["reason"])
        return batch, ckpt, max_b, reasons

    # -- speed --------------------------------------------------------------------------------------
    def _speed(self, spec: ModelSpec, setup: TrainSetup, acc: int):
        """The predicted speed of one setting (None for a GPU without throughput figures)."""
        from autoft.advisor import speed

        return speed.predict(spec, setup, acc, self.hw, mean_tokens=self.q.seq_len_mean,
                             data_size=self.q.data_size, gpus=self.world)

    def _fastest(self, spec: ModelSpec, technique: str, c: dict, ckpt: bool, ckpt_fixed: bool, cap: int,
                 eff_lo: int, margin: float) -> dict | None:
        """The fitting (micro-batch, checkpointing) with the most predicted examples per second.
        The plain setting - the largest micro-batch under the caps with the rules' checkpointing -
        is kept unless another is predicted `margin` faster. Returns {batch, ckpt, eps, reason} or
        None when speed cannot be predicted (a GPU without throughput figures)."""
        q = self.q
        # checkpointing already on (QLoRA's rule, or batch 1 does not fit without) stays on
        options = [ckpt] if ckpt_fixed or ckpt else [False, True]
        cands = []
        for ck in options:
            most = min(self._max_batch(spec, self._setup(technique, c, 1, ckpt=ck)), cap)
            sizes = [q.batch_size] if q.batch_size else sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, most)
                                                                 if 1 <= b <= most})
            for b in sizes:
                setup = self._setup(technique, c, b, ckpt=ck)
                if self._peak(spec, setup).peak_bytes > self.budget:
                    continue
                acc = q.gradient_accumulation_steps or max(1, math.ceil(eff_lo / (b * self.world)))
                pred = self._speed(spec, setup, acc)
                if pred is None:
                    return None
                cands.append({"batch": b, "ckpt": ck, "eps": pred.examples_per_s, "pred": pred})
        if not cands:
            return None
        plain_pool = [x for x in cands if x["ckpt"] == ckpt] or cands
        plain = max(plain_pool, key=lambda x: x["batch"])
        best = max(cands, key=lambda x: (x["eps"], -x["ckpt"], -x["batch"]))
        pick = best if best["eps"] >= (1 + margin) * plain["eps"] else plain
        return {**pick, "reason": _speed_reason(pick, plain, cands, margin)}

    @staticmethod
    def _search_space(technique: str, v: dict) -> dict:
        s: dict[str, Any] = {"learning_rate": list(v.get("lr_range", [1e-5, 1e-4]))}
        for key, name in (("search_weight_decay", "weight_decay"), ("search_warmup_ratio", "warmup_ratio")):
            if key in v:
                s[name] = list(v[key])
        if technique in ("lora", "qlora"):
            for key, name in (("search_lora_rank", "lora_rank"), ("search_lora_dropout", "lora_dropout")):
                if key in v:
                    s[name] = list(v[key])
        if "search_layer_decay" in v:
            s["layer_decay"] = list(v["search_layer_decay"])
        if "search_model_dropout" in v:
            s["model_dropout"] = list(v["search_model_dropout"])
        return s

    # -- the objective: loss weighting and the search's metric -------------------------------------
    def objective(self, out: Outcome) -> tuple[str, str, list[dict]]:
        """(class_weights, metric, reasons) from the setup rules, with the user's --class-weights
        and --metric on top; a choice that does not suit the task is refused."""
        q, reasons = self.q, []
        multi = bool(q.multi_label)
        weights = out.get("class_weights", "none")
        if q.class_weights in ("balanced", "none"):
            weights = q.class_weights
            reasons.append(_reason("OVERRIDE", f"class weights {weights} (you set it)"))
        else:
            reasons += out.reason_for("class_weights") if weights == "balanced" else []
        if weights == "balanced" and self.task != "classification":
            raise AutoftError("--class-weights balanced is for classification", "drop it for generation")
        metric = out.get("metric", "accuracy" if self.task == "classification" else "eval_loss")
        if q.metric:
            metric = q.metric
            if metric == "loss" and self.task != "classification":
                metric = "eval_loss"
            reasons.append(_reason("OVERRIDE", f"search metric {q.metric} (you set it)"))
        else:
            reasons += out.reason_for("metric")
        if self.task != "classification" and metric != "eval_loss":
            raise AutoftError(f"--metric {q.metric} is for classification", "use --metric loss for generation")
        if metric == "micro_f1" and not multi:
            raise AutoftError("--metric micro_f1 is for multi-label data (single-label micro-F1 is accuracy)",
                              "use accuracy or macro_f1")
        if metric == "accuracy" and multi:
            raise AutoftError("--metric accuracy is not defined for multi-label data", "use micro_f1 or macro_f1")
        return weights, metric, reasons

    # -- technique choice for one model ---------------------------------------------------------------
    def best_for_model(self, spec: ModelSpec, facts: dict) -> tuple[list[_Plan], list[dict], dict]:
        """Plans for one model, best first (only fitting ones unless the technique is fixed), the
        technique reasons, and the per-technique lowest peaks."""
        setups = {t: self._setup_for(spec, facts, t) for t in TECHNIQUES}
        peaks = {t: self.min_peak(spec, t, setups[t][1]) for t in TECHNIQUES}
        tfacts = dict(facts)
        for t in TECHNIQUES:
            tfacts[f"fits_{t}"] = peaks[t] is not None and peaks[t].peak_bytes <= self.budget
            tfacts[f"{t}_gib"] = round(peaks[t].peak_gib, 2) if peaks[t] is not None else None
        out = self.rules.run("technique", tfacts)
        reasons: list[dict] = []
        if self.q.technique:
            t = self.q.technique
            reasons.append(_reason("OVERRIDE", f"technique {t} (you set it)", technique=t))
            if t in out.forbid:
                self.warnings.append(f"{out.forbid[t].rule.id}: " + out.forbid[t].reason()["because"])
            out_s, c = setups[t]
            plans = [self.plan(spec, facts, t, out_s, c)]
            # alternatives: the other techniques the rules allow for this model, where they fit
            for o, _ in out.prefer + [(x, None) for x in TECHNIQUES]:
                if len(plans) >= 3:
                    break
                if o == t or o in out.forbid or not tfacts[f"fits_{o}"] or o in [p.technique for p in plans]:
                    continue
                alt = self.plan(spec, facts, o, *setups[o])
                if alt.fits:
                    plans.append(alt)
            return plans, reasons, peaks
        order: list[tuple[str, Any]] = []
        for t, firing in out.prefer:
            if t not in [o[0] for o in order]:
                order.append((t, firing))
        order += [(t, None) for t in TECHNIQUES if t not in [o[0] for o in order]]
        plans, skipped = [], []
        for t, firing in order:
            if t in out.forbid or not tfacts[f"fits_{t}"]:
                if not plans:
                    skipped.append(t)
                continue
            out_s, c = setups[t]
            p = self.plan(spec, facts, t, out_s, c)
            if not plans:
                for s in skipped:
                    if s in out.forbid:
                        reasons.append(out.forbid[s].reason())
                    elif peaks[s] is not None:
                        reasons.append(_reason(
                            "FIT-TECH", f"{s} would need at least {peaks[s].peak_gib:.1f} GiB, more than "
                            f"the {self.budget / GIB:.1f} GiB budget", technique=s,
                            peak_gib=round(peaks[s].peak_gib, 2), budget_gib=round(self.budget / GIB, 2)))
                if firing is not None:
                    r = firing.reason()
                    if r["rule"] not in [x["rule"] for x in reasons]:
                        reasons.append(r)
            plans.append(p)
            if len(plans) >= 3:
                break
        # de-duplicate reasons by (rule, because)
        seen, uniq = set(), []
        for r in reasons:
            k = (r["rule"], r["because"])
            if k not in seen:
                seen.add(k)
                uniq.append(r)
        return plans, uniq, peaks

    # -- overrides that do not fit -------------------------------------------------------------------
    def nearest(self, p: _Plan) -> tuple[str, float] | None:
        """The nearest setting that fits, as CLI flags, and its peak in GiB (None when none does)."""
        spec, s = p.spec, p.setup
        # 1. smaller micro-batch, more accumulation (same effective batch)
        if s.batch_size > 1:
            b = self._max_batch(spec, replace(s, batch_size=1))
            if b >= 1:
                acc = math.ceil(s.batch_size * p.accumulation / b)
                est = self._peak(spec, replace(s, batch_size=b))
                return f"--batch-size {b} --gradient-accumulation-steps {acc}", est.peak_gib
        # 2. gradient checkpointing
        if not s.gradient_checkpointing:
            est = self._peak(spec, replace(s, gradient_checkpointing=True))
            if est.peak_bytes <= self.budget:
                return "--gradient-checkpointing", est.peak_gib
        # 3. LoRA instead of full / freeze (16-bit frozen weights, no optimizer states for them)
        if p.technique in ("full", "freeze"):
            t = replace(s, technique="lora", batch_size=1)
            b = self._max_batch(spec, t)
            if b >= 1:
                b = min(b, s.batch_size)
                est = self._peak(spec, replace(t, batch_size=b))
                extra = f" --batch-size {b}" if self.q.batch_size else ""
                ck = " --gradient-checkpointing" if t.gradient_checkpointing else ""
                return f"--technique lora{ck}{extra}", est.peak_gib
        # 4. QLoRA (4-bit weights) instead of full / freeze / LoRA
        if p.technique != "qlora" and self.kind == "gpu":
            q = replace(s, technique="qlora", gradient_checkpointing=True, batch_size=1,
                        optimizer="paged-adamw-8bit" if self.q.optimizer is None else s.optimizer)
            b = self._max_batch(spec, q)
            if b >= 1:
                b = min(b, s.batch_size)
                est = self._peak(spec, replace(q, batch_size=b))
                extra = f" --batch-size {b}" if self.q.batch_size else ""
                return f"--technique qlora --gradient-checkpointing{extra}", est.peak_gib
        # 5. shorter sequences
        L = s.seq_len
        while L > 64:
            L = max(64, _round_seq(L // 2))
            t = replace(s, seq_len=L, batch_size=1, gradient_checkpointing=True)
            est = self._peak(spec, t)
            if est.peak_bytes <= self.budget:
                return f"--seq-len {L} --batch-size 1 --gradient-checkpointing", est.peak_gib
        return None

    # -- the whole recommendation -------------------------------------------------------------------
    def run(self) -> Recommendation:
        q = self.q
        override_model = q.model is not None
        if override_model:
            from autoft.advisor.catalog import resolve_model

            candidates = [self.fixed_model or resolve_model(q.model, trust_remote_code=q.trust_remote_code)]
        else:
            if self.catalog is None:
                from autoft.advisor.catalog import load_catalog

                self.catalog = load_catalog()
            candidates = list(self.catalog)
        scored = []
        for i, spec in enumerate(candidates):
            facts = self.model_facts(spec)
            out = self.rules.run("model", facts)
            if out.rejected and not override_model:
                continue
            if override_model:
                for r in out.rejected:
                    self.warnings.append(f"{r.rule.id}: " + r.reason()["because"])
            scored.append((out.score, spec.downloads or 0, -i, spec, facts, out))
        if not scored:
            raise AutoftError(f"no model in the catalog suits a {self.task} task on {self.hw.kind}",
                              "pass --model, or plan for a GPU with --gpu NAME")
        scored.sort(key=lambda x: (x[0], x[1], x[2]), reverse=True)

        winner = None  # (plans, technique reasons, model outcome, score, facts)
        others: list[tuple[_Plan, float]] = []
        considered = 0
        for score, _, _, spec, facts, out in scored:
            considered += 1
            plans, treasons, peaks = self.best_for_model(spec, facts)
            if not plans:
                continue
            if winner is None:
                winner = (plans, treasons, out, score, facts, peaks)
            else:
                others.append((plans[0], score))
                if len(others) >= 2:
                    break
        if winner is None:
            smallest = min(scored, key=lambda x: x[3].params)[3]
            raise AutoftError(
                f"no model and technique fits {self.budget / GIB:.1f} GiB ({int(self.safety * 100)}% of "
                f"{self.where}); the smallest candidate is "
                f"{smallest.id}", "plan for a bigger GPU (--gpu NAME or --gpu-memory SIZE) or a shorter --seq-len"
                + (f", or give each trial more of the GPU (--gpus-per-trial above {self.share:g})"
                   if self.share < 1.0 else ""))
        plans, treasons, mout, score, facts, peaks = winner
        best = plans[0]

        reasons: list[dict] = []
        if override_model:
            reasons.append(_reason("OVERRIDE", f"model {best.spec.id} (you set it)", model=best.spec.id))
        else:
            nxt = others[0] if others else None
            rank = (f"{best.spec.id} ranks first (score {score:g}) of {len(scored)} candidate models that "
                    f"suit the task and hardware")
            if nxt:
                rank += f"; next: {nxt[0].spec.id} (score {nxt[1]:g})"
            reasons.append(_reason("MODEL-RANK", rank, score=score, candidates=len(scored)))
            reasons += [f.reason() for f in mout.firings]
        reasons += treasons
        reasons.append(self.seq_reason)
        if self.target_reason:
            reasons.append(self.target_reason)
        if self.share < 1.0:
            reasons.append(_reason("GPU-SHARE", f"each search trial gets {self.share:g} of a GPU (--gpus-per-trial): "
                                   f"the plan fits {self.where}", gpus_per_trial=self.share,
                                   memory_gib=round(self.memory / GIB, 2)))
        reasons += best.reasons
        if q.seq_len and q.seq_len > best.spec.max_positions:
            self.warnings.append(f"--seq-len {q.seq_len} is longer than {best.spec.id} reads "
                                 f"({best.spec.max_positions} tokens): training will fail or extrapolate")
        if facts["seq_len"] < self.seq_wanted and not q.seq_len:
            self.warnings.append(f"the data asks for {self.seq_wanted} tokens; {best.spec.id} reads at most "
                                 f"{best.spec.max_positions}, so longer examples are truncated")
        for w in best.outcome.warnings:
            self.warnings.append(f"{w.rule.id}: " + w.reason()["because"])

        if not best.fits:
            near = self.nearest(best)
            what = (f"{best.spec.id} with {best.technique}, micro-batch {best.setup.batch_size} x "
                    f"{best.setup.seq_len} tokens{', checkpointing' if best.setup.gradient_checkpointing else ''} "
                    f"needs {best.est.peak_gib:.1f} GiB, more than the {self.budget / GIB:.1f} GiB budget "
                    f"({int(self.safety * 100)}% of {self.where})")
            if near:
                fix = f"nearest setting that fits: {near[0]} ({near[1]:.1f} GiB)"
            else:
                fix = "no nearby setting fits: plan for a bigger GPU (--gpu-memory) or a smaller --model"
            if self.share < 1.0:
                fix += f"; or give each trial more of the GPU (--gpus-per-trial above {self.share:g})"
            if not q.force:
                raise AutoftError(what, fix + "; or pass --force to keep your setting")
            self.warnings.append(f"does not fit: {what}; {fix}")
            reasons.append(_reason("OVERRIDE", "kept although it does not fit (--force)"))

        alts: list[dict] = []
        same_model = [(p, f"same model with {p.technique}") for p in plans[1:]]
        other_models = [(p, f"next-ranked model (score {s:g})") for p, s in others]
        for group in ([other_models[:1], same_model[:1], other_models[1:2], same_model[1:2]]):
            for p, note in group:
                if len(alts) < 3:
                    alts.append(self._short(p, note))
        weights, metric, why = self.objective(best.outcome)
        rec = self._recommendation(best, reasons + why, alts)
        rec.class_weights, rec.metric, rec.metric_higher_is_better = weights, metric, METRICS[metric]
        return rec

    def _short(self, p: _Plan, note: str) -> dict:
        return {
            "model": p.spec.to_dict(), "technique": p.technique, "batch_size": p.setup.batch_size,
            "gradient_accumulation_steps": p.accumulation, "effective_batch_size": p.effective,
            "seq_len": p.setup.seq_len, "target_len": p.setup.target_len, "precision": p.setup.precision,
            "gradient_checkpointing": p.setup.gradient_checkpointing, "optimizer": p.setup.optimizer,
            "lora": p.lora, "freeze_layers": p.setup.freeze_layers if p.technique == "freeze" else None,
            "estimate": _est_dict(p.est), "fits": p.fits, "max_batch_size": p.max_batch,
            "search_space": p.search_space, "strategy": p.strategy, "note": note,
            "speed": p.speed.to_dict() if p.speed is not None else None,
        }

    def _recommendation(self, p: _Plan, reasons: list[dict], alts: list[dict]) -> Recommendation:
        return Recommendation(
            model=p.spec.to_dict(), technique=p.technique, batch_size=p.setup.batch_size,
            gradient_accumulation_steps=p.accumulation, effective_batch_size=p.effective,
            seq_len=p.setup.seq_len, precision=p.setup.precision,
            gradient_checkpointing=p.setup.gradient_checkpointing, optimizer=p.setup.optimizer,
            lora=p.lora, freeze_layers=p.setup.freeze_layers if p.technique == "freeze" else None,
            estimate=_est_dict(p.est), fits=p.fits, memory_gib=round(self.memory / GIB, 2),
            safety=self.safety, max_batch_size=p.max_batch, gpu=_gpu_summary(self.hw),
            reasons=reasons, alternatives=alts, search_space=p.search_space, task=self.task,
            num_labels=self.q.num_labels, warnings=list(dict.fromkeys(self.warnings)),
            question=self.q.to_dict(), trust_remote_code=self.q.trust_remote_code, strategy=p.strategy,
            world_size=self.world, speed=p.speed.to_dict() if p.speed is not None else None,
            target_len=p.setup.target_len if p.spec.family == "encoder-decoder" else self.target_wanted)


def _setting(x: dict) -> str:
    return f"micro-batch {x['batch']} {'with' if x['ckpt'] else 'without'} checkpointing"


def _speed_reason(pick: dict, plain: dict, cands: list[dict], margin: float) -> dict:
    """The SPEED reason: the predicted figure of the pick, against the plain setting or the runner-up."""
    p = pick["pred"]
    what = f"{_setting(pick)}: about {pick['eps']:.3g} examples/s predicted"
    if pick is not plain:
        what += f", {pick['eps'] / plain['eps'] - 1:.0%} faster than {_setting(plain)} ({plain['eps']:.3g}/s)"
    else:
        rest = [x for x in cands if x is not pick]
        if rest:
            nxt = max(rest, key=lambda x: x["eps"])
            what += (f"; the fastest alternative, {_setting(nxt)} ({nxt['eps']:.3g}/s), is not "
                     f"{margin:.0%} faster" if nxt["eps"] > pick["eps"] else ", the fastest that fits")
    what += f" ({p.tokens_assumed}; assumes {p.assumption})"
    return _reason("SPEED", what, examples_per_s=round(pick["eps"], 3), batch_size=pick["batch"],
                   gradient_checkpointing=pick["ckpt"], tokens_per_example=round(p.tokens_per_example, 1),
                   candidates=[{"batch_size": x["batch"], "gradient_checkpointing": x["ckpt"],
                                "examples_per_s": round(x["eps"], 3)} for x in cands])


def _est_dict(est: Estimate) -> dict:
    d = est.to_dict()
    return {"peak_gib": d["peak_gib"], "breakdown_gib": d["breakdown_gib"], "notes": d.get("notes", [])}


def advise(question: Question, hardware: Hardware | None = None, catalog: list[ModelSpec] | None = None
           ) -> Recommendation:
    """Recommend a model, technique and setup for `question` on `hardware` (planned from the
    question's --gpu/--gpu-memory/--gpus when None), choosing among `catalog` (rules/models.toml
    when None). Raises AutoftError when nothing fits, or when an override does not fit and
    question.force is off."""
    if hardware is None:
        from autoft.advisor.hardware import plan_hardware

        hardware = plan_hardware(question.gpu, question.gpu_memory, question.gpus)
    fixed = None
    if question.model is not None:
        from autoft.advisor.catalog import resolve_model

        fixed = resolve_model(question.model, trust_remote_code=question.trust_remote_code)
    return _Advisor(question, hardware, catalog, fixed).run()
