"""One training configuration, trained with a plain PyTorch loop: `Trial`.

The successive-halving search and the final fine-tune both drive a `Trial`:

    trial = Trial("path/to/model", bundle, task="classification", technique="lora",
                  hparams={"learning_rate": 3e-4, "lora_r": 16}, batch_size=16, seq_len=128)
    trial.train(100)                     # 100 optimizer steps (micro-batches x grad_accum each)
    trial.evaluate("validation")         # {"loss", "accuracy", "macro_f1", ...}
    trial.save_checkpoint(dir)           # promoted? later: Trial.load_checkpoint(dir, bundle)
    trial.train(200)                     #  ... continues where it stopped
    trial.save_model(out_dir)            # PEFT adapter or full safetensors + tokenizer
    trial.close()                        # frees the model, optimizer and GPU memory

The loop reads top to bottom (torchtune-recipe style, not HF Trainer): micro-batch forward,
loss / grad_accum, backward, clip, optimizer step, scheduler step. Losses stay on the device and
are only read back (one sync) every `log_every` optimizer steps and at the end of `train()`.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autoft.advisor.spec import OPTIMIZERS, TASKS, check_at_least, check_choice
from autoft.autotrain.checkpoints import TRIAL_META, TrialDiverged, is_complete
from autoft.autotrain.schedule import smaller_micro_batch
from autoft.errors import AutoftError

__all__ = ["Trial", "TrialDiverged", "resolve_device"]

# The hparams keys a Trial understands (a technique ignores those that do not apply to it).
HPARAM_KEYS = ("learning_rate", "weight_decay", "warmup_ratio", "warmup_steps", "lora_r",
               "lora_alpha", "lora_dropout", "freeze_layers", "layer_decay", "model_dropout")
MULTI_LABEL = "multi_label_classification"
LR_SCHEDULES = ("constant", "linear", "cosine")
CHECKPOINT_FORMAT = 1


class Trial:
    """One configuration (model + technique + hyperparameters) being trained.

    One process. `autotrain/distributed.py: DistributedTrial` is the same loop as one of several
    data-parallel processes; it overrides the hooks marked "distributed hook" below.

    Arguments:
        model_source: Hub id (offline-safe), a local model folder, or a `.gguf` file.
        bundle: a DataBundle (duck-typed: `.task`, `.splits` {"train","validation","test"} -> list
            of records, `.label_names`). Classification records are {"text", "label"}; generation
            records are {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}.
        task: "classification", "generation", "summarization" or "translation" (records
            {"source", "target"}; an encoder-decoder trains on source -> target, a decoder on an
            instruction prompt with the target as its response).
        technique: "full", "freeze", "lora" or "qlora" (see `autoft.autotrain.techniques`).
        hparams: learning_rate (default 2e-5 full, 1e-4 freeze, 2e-4 lora/qlora), weight_decay
            (0.0), warmup_steps / warmup_ratio (ratio needs total_steps), lora_r, lora_alpha,
            lora_dropout, freeze_layers (bottom layers kept frozen), layer_decay (freeze, 0.8-1.0),
            model_dropout (every dropout probability of the model's config, 0-1; default: the
            model's own). Keys that do not apply to the technique are ignored; unknown keys are an error.
        batch_size: micro-batch size; grad_accum: micro-batches per optimizer step.
        seq_len: truncation length in tokens (an encoder-decoder's source length).
        target_len: summarization/translation on an encoder-decoder: truncation length of the
            target in tokens (default: seq_len).
        precision: "fp32" (the only choice on CPU), "bf16" or "fp16" (CUDA autocast; fp16 uses a
            GradScaler). For qlora it is also the 4-bit compute dtype.
        gradient_checkpointing: recompute activations in backward.
        device: "cpu", "cuda" or "cuda:N".
        seed: seeds torch, the model's new weights (head, LoRA) and the data order.
        lr_schedule: "constant" (after warmup; the search) or "linear"/"cosine" decay to 0 at
            total_steps (the final run; total_steps required).
        decay_start: optimizer step where the decay begins (default: the end of warmup). The final
            run that continues the search's winner starts its decay there: constant learning rate
            in the search, then decay (a warmup-stable-decay schedule).
        total_steps: planned optimizer steps (for decay and warmup_ratio).
        warmup_steps: linear warmup steps (hparams' warmup_steps/warmup_ratio take precedence).
        label_names: class names in id order (default: bundle.label_names).
        trust_remote_code: passed to transformers (off by default).
        max_eval_examples: cap on examples per evaluate() call (None: the whole split).
        optimizer: "adamw" (torch, fused on CUDA), "adamw-8bit" or "paged-adamw-8bit" (bnb).
        packing: generation only: pack whole examples into blocks of up to seq_len tokens
            instead of length grouping. Examples never attend to each other: per-example
            position ids (transformers' packed-sequence mask), else a 4D block-diagonal mask, else
            packing is turned off; which one was checked on this model is in `packing_mode` and
            `notes` (see `_choose_packing`).
        log_every: read the loss back (one device sync) every this many optimizer steps.
        class_weights: classification: one weight per class (weighted cross-entropy), or for
            multi-label one pos_weight per label (binary cross-entropy); None: unweighted. See
            `autoft.autotrain.imbalance.class_weights`. Validation loss is weighted the same way.
        problem_type: "single_label_classification" or "multi_label_classification" (sigmoid
            outputs, binary cross-entropy, a decision threshold tuned on validation); None:
            multi-label when `bundle.multi_label`.

    Attributes: `model`, `tokenizer`, `steps_done` (optimizer steps so far), `samples_seen`,
    `tokens_seen` (non-pad tokens), `batch_size`, `grad_accum`, `history` (the logged step
    dicts, kept across checkpoints), `args` (constructor arguments, saved in trial.json),
    `multi_label`, `threshold` (multi-label decision threshold, tuned by evaluate("validation")),
    `packing_mode` ("position_ids", "block_mask", "off" or None), `notes` (what was decided, for
    the run's log).
    """

    def __init__(self, model_source: str | os.PathLike, bundle: Any, *, task: str, technique: str,
                 hparams: dict | None = None, batch_size: int = 8, grad_accum: int = 1,
                 seq_len: int = 128, precision: str = "fp32", gradient_checkpointing: bool = False,
                 device: str = "cpu", seed: int = 0, lr_schedule: str = "constant",
                 total_steps: int | None = None, warmup_steps: int = 0, decay_start: int | None = None,
                 label_names: list[str] | None = None, trust_remote_code: bool = False,
                 max_eval_examples: int | None = None, optimizer: str = "adamw",
                 packing: bool = False, log_every: int = 10, class_weights: list[float] | None = None,
                 problem_type: str | None = None, target_len: int | None = None):
        from autoft.autotrain import tasks
        from autoft.autotrain.models import load_model_and_tokenizer
        from autoft.autotrain.step import prepare_model
        from autoft.autotrain.techniques import get_technique, make_config

        hparams = dict(hparams or {})
        if problem_type is None and task == "classification":
            problem_type = MULTI_LABEL if getattr(bundle, "multi_label", False) else "single_label_classification"
        class_weights = [float(w) for w in class_weights] if class_weights is not None else None
        # Everything needed to rebuild this Trial from a checkpoint (no data, no objects).
        self.args = dict(model_source=str(model_source), task=task, technique=technique,
                         hparams=hparams, batch_size=batch_size, grad_accum=grad_accum,
                         seq_len=seq_len, precision=precision,
                         gradient_checkpointing=gradient_checkpointing, device=device, seed=seed,
                         lr_schedule=lr_schedule, total_steps=total_steps,
                         warmup_steps=warmup_steps, decay_start=decay_start, label_names=label_names,
                         trust_remote_code=trust_remote_code, max_eval_examples=max_eval_examples,
                         optimizer=optimizer, packing=packing, log_every=log_every,
                         class_weights=class_weights, problem_type=problem_type)
        if target_len is not None:
            self.args["target_len"] = target_len
        _check_args(hparams, task, lr_schedule, total_steps, batch_size, grad_accum, seq_len, precision,
                    device, optimizer)  # one-line errors, before any model is loaded
        self.device = torch.device(device)
        self.info = get_technique(technique)
        self.tech_config = make_config(technique, hparams)
        self.task, self.technique, self.hparams = task, technique, hparams
        self.target_len = int(target_len or seq_len)
        self.batch_size, self.grad_accum, self.seq_len = batch_size, grad_accum, seq_len
        self.precision, self.seed, self.log_every = precision, seed, max(1, log_every)
        self.max_eval_examples, self.bundle = max_eval_examples, bundle
        self.lr = float(hparams.get("learning_rate", self.info.default_lr))
        self.weight_decay = float(hparams.get("weight_decay", 0.0))
        if not (math.isfinite(self.lr) and self.lr > 0):  # (a huge finite one diverges honestly)
            raise AutoftError(f"learning rate must be positive, got {self.lr}", "use e.g. 2e-5 .. 1e-3")
        if "warmup_steps" in hparams:
            warmup_steps = int(hparams["warmup_steps"])
        elif "warmup_ratio" in hparams and total_steps:
            warmup_steps = int(round(float(hparams["warmup_ratio"]) * total_steps))
        self.warmup_steps, self.total_steps, self.lr_schedule = int(warmup_steps), total_steps, lr_schedule
        self.decay_start = max(self.warmup_steps, int(decay_start or 0))
        self.label_names = list(label_names or getattr(bundle, "label_names", None) or []) if task == "classification" else []
        if task == "classification" and len(self.label_names) < 2:
            raise AutoftError("classification needs at least 2 label names", "check the data's label column")
        self.multi_label = problem_type == MULTI_LABEL
        self.threshold = 0.5
        self.notes: list[str] = []
        self.packing_mode: str | None = None
        self._weights = self._check_weights(class_weights, task)

        # -- model: load, apply the technique (seeded: new head and LoRA weights) --
        torch.manual_seed(seed)  # (autoft's own randomness - data order - uses private RNGs)
        model, self.tokenizer = load_model_and_tokenizer(
            model_source, task, technique, label_names=self.label_names or None,
            precision=precision, device=self.load_device or str(self.device), trust_remote_code=trust_remote_code,
            problem_type=problem_type if task == "classification" else None,
            model_dropout=hparams.get("model_dropout"))
        # segment ids only for models that have segment embeddings (BERT-style pairs)
        self._token_types = int(getattr(model.config, "type_vocab_size", 0) or 0) >= 2
        # no KV cache, the technique, fp32 masters of the trainable weights (shared with the tracer)
        model, self.params = prepare_model(model, self.info, self.tech_config, task, gradient_checkpointing)
        self.model = model
        # how records become tensors: classification, generation (decoders, seq2seq tasks too) or
        # seq2seq (an encoder-decoder)
        self.kind = tasks.encoding_kind(task, model.config)
        if not self.params:
            raise AutoftError(f"technique {technique} left nothing to train", "check its settings")
        self.train_module = model  # what the training loop calls (a DistributedTrial: its DDP wrapper)
        self._distribute()

        # -- optimizer and schedule --
        groups = self.info.module.trainable_parameter_groups(model, self.tech_config, self.lr, self.weight_decay)
        self.optimizer = self._make_optimizer(groups, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.clip_norm = self.info.clip_norm

        # -- data: tokenise the training split once; a seeded endless stream of indices --
        self._encoded: dict[str, list[dict]] = {}
        train = self._encode("train")
        if self.kind == "generation" and packing:
            train = self._encoded["train"] = self._choose_packing(train)
        self.stream = tasks.ExampleStream([len(e["input_ids"]) for e in train], seed,
                                          group_by_length=self.packing_mode in (None, "off"))
        self.steps_done, self.samples_seen, self.tokens_seen = 0, 0, 0
        self.history: list[dict] = []
        self.merged = False
        # out-of-memory back-off: how often it happened, and who to tell (bs, accum)
        self.backoffs = 0
        self.on_backoff: Callable[[int, int], None] | None = None
        model.train()  # once; evaluate() puts it back

    @classmethod
    def from_spec(cls, spec, bundle: Any, hparams: dict, **schedule) -> "Trial":
        """A Trial for one configuration (`hparams`) of a run's `plan.TrialSpec`; `schedule` gives
        lr_schedule, total_steps, decay_start (and may override max_eval_examples)."""
        kw = dict(task=spec.task, technique=spec.technique, batch_size=spec.batch_size,
                  grad_accum=spec.grad_accum, seq_len=spec.seq_len, precision=spec.precision,
                  gradient_checkpointing=spec.gradient_checkpointing, device=spec.device, seed=spec.seed,
                  optimizer=spec.optimizer, max_eval_examples=spec.max_eval_examples,
                  trust_remote_code=spec.trust_remote_code,
                  class_weights=list(spec.class_weights) if getattr(spec, "class_weights", None) else None,
                  packing=bool(getattr(spec, "packing", False)), target_len=getattr(spec, "target_len", None))
        kw.update(schedule)
        return cls(spec.model, bundle, hparams=hparams, **kw)

    # -- distributed hooks (one process: no-ops) ----------------------------------------------------
    load_device: str | None = None  # where the model is loaded, when not the training device
    rank, world_size = 0, 1  # this process among the data-parallel ones

    def _distribute(self) -> None:
        """Wrap or shard the model (after the technique, before the optimizer)."""

    def _micro_step(self, last: bool):
        """Context of one micro-batch's forward and backward (DDP: no gradient sync but the last)."""
        return contextlib.nullcontext()

    def _global_mean(self, value: "torch.Tensor") -> "torch.Tensor":
        """The mean of `value` over the data-parallel processes."""
        return value

    # -- construction helpers --------------------------------------------------------------------
    def _make_optimizer(self, groups: list[dict], name: str):
        from autoft.autotrain.step import make_optimizer  # (shared with the tracer)

        return make_optimizer(groups, name, self.lr, self.device.type)

    def _lr_factor(self, step: int) -> float:
        """Multiplier of the base LR at optimizer step `step`: linear warmup, then constant
        (search) or constant until decay_start and linear/cosine decay to 0 at total_steps (final
        run)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.lr_schedule == "constant" or step < self.decay_start:
            return 1.0
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start) / span)
        if self.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _encode(self, split: str) -> list[dict]:
        """Tokenised examples of a split (cached)."""
        from autoft.autotrain import tasks

        if split not in self._encoded:
            records = (getattr(self.bundle, "splits", None) or {}).get(split)
            if records is None:
                raise AutoftError(f"the data has no {split} split", "give the data a " + split + " split")
            if self.task == "classification":
                enc = tasks.encode_classification(records, self.tokenizer, self.seq_len, self.label_names)
            elif self.kind == "seq2seq":
                enc = tasks.encode_seq2seq(records, self.tokenizer, self.seq_len, self.target_len, self._prefix())
            elif self.task in tasks.SEQ2SEQ_TASKS:  # a decoder: instruction prompt + target as response
                enc = tasks.encode_generation([{"messages": self.messages(r)} for r in records],
                                              self.tokenizer, self.seq_len)
            else:
                enc = tasks.encode_generation(records, self.tokenizer, self.seq_len)
            self._encoded[split] = enc
        return self._encoded[split]

    def _prefix(self) -> str:
        from autoft.autotrain.tasks import source_prefix

        return source_prefix(getattr(self.model.config, "model_type", ""), self.task,
                             getattr(self.bundle, "source_lang", None), getattr(self.bundle, "target_lang", None))

    def messages(self, record: dict) -> list[dict]:
        """A {source, target} record as the conversation a decoder trains on (seq2seq tasks)."""
        from autoft.autotrain.tasks import seq2seq_messages

        return seq2seq_messages(record, self.task, getattr(self.bundle, "source_lang", None),
                                getattr(self.bundle, "target_lang", None))

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        keys = ["input_ids", "attention_mask", "labels"]
        if self._token_types and "token_type_ids" in batch:
            keys.append("token_type_ids")
        if "position_ids" in batch:           # packed blocks (see _choose_packing)
            keys.append("position_ids")
            keys.remove("attention_mask")     # None: transformers reads the blocks from position ids
        out = {k: batch[k].to(self.device, non_blocking=nb) for k in keys}
        if "position_ids" in out and self.packing_mode == "block_mask":
            out["attention_mask"] = self._block_mask(out["position_ids"])
        return out

    # -- class weights, multi-label loss -----------------------------------------------------------
    def _check_weights(self, weights: list[float] | None, task: str):
        if weights is None:
            return None
        if task != "classification":
            raise AutoftError("class weights are for classification", "drop class_weights for generation")
        if len(weights) != len(self.label_names):
            raise AutoftError(f"{len(weights)} class weights for {len(self.label_names)} labels",
                              "give one weight per label, in label_names order")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise AutoftError("class weights must be finite, non-negative and not all zero")
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _classification_loss(self, logits, labels):
        """(summed loss, summed weight) of a batch, fp32; their ratio is the mean loss. Weighted
        cross-entropy divides by the summed weights of the targets (torch's weighted mean);
        multi-label is binary cross-entropy averaged over labels, pos_weight = class_weights."""
        F = torch.nn.functional
        logits = logits.float()
        if self.multi_label:
            per = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self._weights,
                                                     reduction="none").mean(-1)
            return per.sum(), logits.new_tensor(float(per.numel()))
        per = F.cross_entropy(logits, labels, weight=self._weights, reduction="none")
        den = self._weights[labels].sum() if self._weights is not None else logits.new_tensor(float(labels.numel()))
        return per.sum(), den

    def _loss(self, b: dict, module=None):
        """The mean training loss of one micro-batch (on the device); `module`: what runs the
        forward pass (the DDP wrapper in a distributed run, whose backward syncs gradients)."""
        module = module if module is not None else self.model
        if self.task != "classification" or (self._weights is None and not self.multi_label):
            return module(**b).loss
        labels = b.pop("labels")
        total, weight = self._classification_loss(module(**b).logits, labels)
        return total / weight

    # -- packing ------------------------------------------------------------------------------------
    def _choose_packing(self, examples: list[dict]) -> list[dict]:
        """Pack the training examples and check, on this model, that a packed example gives the
        logits it gives alone: first with per-example position ids and no attention mask
        (transformers >= 4.53 turns restarting position ids into a block-diagonal causal mask for
        sdpa and eager attention, flash-attention 2 reads them directly), then with a 4D
        block-diagonal mask built here; if neither holds, packing is off (length grouping)."""
        from autoft.autotrain import tasks

        impl = getattr(self.model.config, "_attn_implementation", "?")
        for mode in ("position_ids", "block_mask"):
            self.packing_mode = mode
            if self._packing_keeps_examples_apart(examples):
                how = ("per-example position ids (transformers' packed-sequence mask)" if mode == "position_ids"
                       else "a block-diagonal 4D attention mask")
                self.notes.append(f"packing: examples kept apart by {how}, {impl} attention")
                return tasks.pack(examples, self.seq_len, self.seed)
        self.packing_mode = "off"
        self.notes.append(f"packing off: this model ({impl} attention) let packed examples attend to each "
                          "other with both position ids and a 4D mask; length-grouped batches instead")
        return examples

    @torch.no_grad()
    def _packing_keeps_examples_apart(self, examples: list[dict]) -> bool:
        """Two training examples (8 tokens each at most) packed into one block: does the second
        one's logits equal its logits alone? Differences from crossing attention are of the order
        of the logits; numerical ones (fp32) of 1e-5."""
        from autoft.autotrain.tasks import collate

        usable = [e for e in examples if len(e["input_ids"]) >= 2][:2]
        if len(usable) < 2:
            return True            # nothing to pack together
        a, b = (e["input_ids"][:8] for e in usable)
        block = {"input_ids": a + b, "labels": [-100] * (len(a) + len(b)),
                 "position_ids": list(range(len(a))) + list(range(len(b)))}
        pad = self.tokenizer.pad_token_id
        model = self.model
        model.eval()
        try:
            with self._autocast():
                packed = model(**{k: v for k, v in self._to_device(collate([block], pad, "generation")).items()
                                  if k != "labels"}).logits[0, len(a):].float()
                alone = model(input_ids=torch.tensor([b], device=self.device)).logits[0].float()
        except Exception:          # noqa: BLE001  (an architecture that refuses the inputs)
            return False
        finally:
            model.train()
        tol = (1e-3 if self.autocast_dtype is None else 3e-2) * max(1.0, alone.abs().max().item())
        return bool((packed - alone).abs().max().item() <= tol)

    def _block_mask(self, position_ids):
        """(batch, 1, L, L) causal mask that only lets a token see earlier tokens of its own
        example: bool for sdpa (True = attend), additive float (0 / min) for eager attention."""
        seg = (torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1).cumsum(-1)
        L = position_ids.shape[-1]
        causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal
        if getattr(self.model.config, "_attn_implementation", None) == "sdpa":
            return allowed[:, None]
        dtype = self.autocast_dtype or torch.float32
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- training ------------------------------------------------------------------------------
    def train(self, steps: int, on_step: Callable[[dict], None] | None = None) -> dict:
        """Train `steps` more optimizer steps, cycling epochs with a seeded order.

        `on_step` is called every `log_every` steps and at the last one with {step, loss, lr,
        epoch, samples, tokens, seconds}. Returns {steps_done (total so far), steps (this call),
        train_loss (mean over the steps since the last back-off), samples, tokens, seconds,
        epoch, peak_memory_bytes (CUDA only, else None)}.

        Out of memory: the one back-off of autoft (search and final run alike) - half the
        micro-batch, twice the accumulation (the same effective batch), the interrupted optimizer
        step redone - down to micro-batch 1, where `torch.OutOfMemoryError` propagates.
        Raises `TrialDiverged` on a NaN/inf loss."""
        target, samples0, tokens0 = self.steps_done + steps, self.samples_seen, self.tokens_seen
        t0 = time.perf_counter()
        while True:
            try:
                res = self._train(target - self.steps_done, on_step)
                break
            except torch.OutOfMemoryError as err:
                self._back_off(err)
        res.update(steps=steps, samples=self.samples_seen - samples0, tokens=self.tokens_seen - tokens0,
                   seconds=time.perf_counter() - t0)
        return res

    def set_schedule(self, *, lr_schedule: str, total_steps: int | None, warmup_steps: int | None = None,
                     decay_start: int | None = None) -> None:
        """Change the learning-rate schedule for the steps not trained yet (the scheduler reads
        these attributes at every step) and the saved arguments, so that a checkpoint rebuilds the
        Trial with it: a probed Trial handed to the search or the final run, or a final run that
        a time budget shortens."""
        check_choice("learning-rate schedule", lr_schedule, LR_SCHEDULES)
        if lr_schedule != "constant" and not total_steps:
            raise AutoftError(f"the {lr_schedule} schedule needs total_steps", "pass total_steps")
        if warmup_steps is not None:
            self.warmup_steps = int(warmup_steps)
            self.hparams["warmup_steps"] = int(warmup_steps)
        self.lr_schedule, self.total_steps = lr_schedule, total_steps
        self.decay_start = max(self.warmup_steps, int(decay_start or 0))
        self.args.update(lr_schedule=lr_schedule, total_steps=total_steps, warmup_steps=self.warmup_steps,
                         decay_start=decay_start, hparams=self.hparams)

    def _back_off(self, err: BaseException) -> None:
        """After an out-of-memory error: a smaller micro-batch with the same effective batch, or
        `err` again at micro-batch 1."""
        if self.batch_size <= 1:
            raise err
        bs, accum = smaller_micro_batch(self.batch_size, self.grad_accum)
        self.backoffs += 1
        self.set_micro_batch(bs, accum)
        gc.collect()
        if self.on_backoff is not None:
            self.on_backoff(bs, accum)

    def _train(self, steps: int, on_step: Callable[[dict], None] | None) -> dict:
        """`train` without the back-off: an out-of-memory error rolls the half-done step back and
        propagates."""
        from autoft.autotrain.step import optimizer_step
        from autoft.autotrain.tasks import collate

        if self.model is None:
            raise RuntimeError("this Trial is closed")
        if self.merged:
            raise RuntimeError("the adapter was merged by save_model(merge=True); the Trial cannot train further")
        if steps <= 0:
            return {"steps_done": self.steps_done, "steps": 0, "train_loss": None, "samples": 0,
                    "tokens": 0, "seconds": 0.0, "epoch": self.stream.epoch, "peak_memory_bytes": None}
        model, opt, sched, scaler = self.train_module, self.optimizer, self.scheduler, self.scaler
        train = self._encoded["train"]
        pad = self.tokenizer.pad_token_id
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        losses = torch.zeros(steps, device=self.device)  # stays on the device: no per-step sync
        t0, samples, tokens, padded, last_read = time.perf_counter(), 0, 0, 0, 0
        for s in range(steps):
            step_start = self.stream.position
            counts = [0, 0, 0]  # samples, tokens, padded tokens (what the step computes on) of this step

            def micro_batches():
                for _ in range(self.grad_accum):
                    # every process takes the same slice of the stream and trains on its share: the
                    # effective batch is batch_size x grad_accum x world_size
                    glob = self.stream.take(self.batch_size * self.world_size)
                    idx = glob[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
                    batch = collate((train[i] for i in idx), pad, self.kind)
                    counts[0] += len(glob)
                    counts[1] += (batch["num_tokens"] if self.world_size == 1
                                  else sum(len(train[i]["input_ids"]) for i in glob))
                    counts[2] += int(batch["input_ids"].numel())
                    yield self._to_device(batch)

            try:
                # the step itself is shared with the memory tracer (autotrain/step.py)
                step_loss = optimizer_step(model, micro_batches(), optimizer=opt, scheduler=sched, scaler=scaler,
                                           params=self.params, clip_norm=self.clip_norm,
                                           grad_accum=self.grad_accum, autocast=self._autocast,
                                           loss_fn=lambda b: self._loss(b, model), micro_step=self._micro_step)
            except torch.OutOfMemoryError:
                # Undo the half-done step so that a retry with a smaller micro-batch redoes it.
                opt.zero_grad(set_to_none=True)
                self.stream.position = step_start
                self.stream._epoch = -1
                raise
            step_samples, step_tokens, step_padded = counts
            padded += step_padded
            losses[s] = step_loss / self.grad_accum
            self.steps_done += 1
            samples += step_samples
            tokens += step_tokens
            self.samples_seen += step_samples
            self.tokens_seen += step_tokens
            if self.steps_done % self.log_every == 0 or s == steps - 1:
                window = losses[last_read:s + 1]
                mean = self._global_mean(window.mean()).item()  # the one sync per log_every steps
                last_read = s + 1
                if not math.isfinite(mean):
                    raise TrialDiverged(self.steps_done, mean)
                entry = {"step": self.steps_done, "loss": mean, "lr": sched.get_last_lr()[0],
                       "epoch": round(self.stream.epoch, 4), "samples": self.samples_seen,
                       "tokens": self.tokens_seen, "seconds": time.perf_counter() - t0}
                self.history.append(entry)
                if on_step is not None:
                    on_step(entry)
        seconds = time.perf_counter() - t0
        mean_loss = self._global_mean(losses.mean()).item()
        if not math.isfinite(mean_loss):
            raise TrialDiverged(self.steps_done, mean_loss)
        return {"steps_done": self.steps_done, "steps": steps, "train_loss": mean_loss,
                "samples": samples, "tokens": tokens, "padded_tokens": padded, "seconds": seconds,
                "epoch": self.stream.epoch,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None}

    def padded_tokens_per_micro_batch(self, micro_batches: int | None = None, batch_size: int | None = None) -> float:
        """Mean padded tokens (width x rows) of a micro-batch over the first `micro_batches` of the
        training stream (None: one epoch). The stream groups examples by length, each chunk longest
        first and the longest chunk first of all, so the first steps are the dearest: a short run
        costs more per step than the epoch's mean. Step times scale by this (autotrain/probe.py)."""
        from autoft.autotrain import tasks

        lengths, b, n = self.stream.lengths, batch_size or self.batch_size, len(self.stream.lengths)
        want = micro_batches if micro_batches else -(-n // b)
        widths, epoch = [], 0
        while len(widths) < want:
            order = tasks.epoch_order(lengths, self.stream.seed, epoch, self.stream.group)
            widths += [max(lengths[i] for i in order[k:k + b]) * len(order[k:k + b]) for k in range(0, n, b)]
            epoch += 1
            if micro_batches is None or epoch >= 3:  # later epochs look like the first ones
                break
        widths = widths[:want]
        return sum(widths) / max(1, len(widths))

    def set_batch(self, batch_size: int, grad_accum: int) -> None:
        """The micro-batch and micro-batches per optimizer step from the next step on; the
        effective batch may change (a time budget's cut when a useful run does not fit otherwise;
        autotrain/budget.py). The stream of examples goes on where it is."""
        if batch_size < 1 or grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.args.update(batch_size=batch_size, grad_accum=grad_accum)

    def set_micro_batch(self, batch_size: int, grad_accum: int) -> None:
        """Change the micro-batch and accumulation (e.g. halve / double after an OOM). The
        effective batch batch_size x grad_accum must stay the same; the data order is unchanged."""
        if batch_size < 1 or grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")
        if batch_size * grad_accum != self.batch_size * self.grad_accum:
            raise ValueError(f"effective batch would change from {self.batch_size * self.grad_accum} "
                             f"to {batch_size * grad_accum}")
        self.set_batch(batch_size, grad_accum)
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_batches(self, split: str, max_examples: int | None):
        from autoft.autotrain.tasks import collate

        enc = self._encode(split)
        limit = max_examples if max_examples is not None else self.max_eval_examples
        if limit is not None:
            enc = enc[:limit]
        # Sorted by length: less padding, same metrics (order does not matter for them).
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]["input_ids"]))
        # Classification logits are tiny: twice the training micro-batch. Generation logits
        # (batch x seq x vocab) are what runs out of memory at eval time: the training micro-batch.
        bs = max(1, 2 * self.batch_size if self.task == "classification" else self.batch_size)
        for k in range(0, len(order), bs):
            idx = order[k:k + bs]
            yield idx, collate((enc[i] for i in idx), self.tokenizer.pad_token_id, self.kind)

    def evaluate(self, split: str = "validation", max_examples: int | None = None) -> dict:
        """Metrics on a split (no gradients, model back to train mode afterwards).
        Classification: {loss, accuracy, macro_f1, per_class {label: {precision, recall, f1,
        support}}, confusion_matrix (rows true, cols predicted), labels, examples}; with class
        weights the loss is weighted as in training.
        Multi-label: {loss, micro_f1, macro_f1, micro_precision, micro_recall, subset_accuracy,
        per_label {...}, threshold, labels, examples}: on "validation" the decision threshold is
        tuned first (the one that maximises micro-F1) and kept for later splits (test).
        Generation: {eval_loss, perplexity, tokens, examples}.
        Out of memory: the training back-off (evaluation batches follow the micro-batch)."""
        while True:
            try:
                return self._evaluate(split, max_examples)
            except torch.OutOfMemoryError as err:
                self._back_off(err)

    @torch.no_grad()
    def _evaluate(self, split: str, max_examples: int | None) -> dict:
        from autoft.autotrain import evaluate as ev

        model = self.model
        model.eval()
        try:
            if self.task == "classification":
                loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
                w_sum = torch.zeros((), device=self.device, dtype=torch.float64)
                outs, trues, n = [], [], 0
                for _, batch in self._eval_batches(split, max_examples):
                    b = self._to_device(batch)
                    labels = b.pop("labels")
                    with self._autocast():
                        logits = model(**b).logits
                    logits = logits.float()
                    total, weight = self._classification_loss(logits, labels)
                    loss_sum += total
                    w_sum += weight
                    outs.append(torch.sigmoid(logits) if self.multi_label else logits.argmax(-1))
                    trues.append(batch["labels"])
                    n += len(batch["labels"])
                if n == 0:
                    raise AutoftError(f"the {split} split is empty", "give it some examples")
                y_out = torch.cat(outs).cpu().tolist()
                y_true = torch.cat(trues).tolist()
                if self.multi_label:
                    out = self._multilabel_scores(split, y_true, y_out)
                else:
                    out = ev.classification_metrics(y_true, y_out, self.label_names)
                out["loss"] = (loss_sum / w_sum).item()
                return out
            if self.kind == "seq2seq":
                return self._evaluate_seq2seq(split, max_examples)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            n_tok, n = 0, 0
            for _, batch in self._eval_batches(split, max_examples):
                b = self._to_device(batch)
                with self._autocast():
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                # Token-weighted: sum of per-token losses over response tokens (shifted). One
                # row at a time in fp32, so a large vocabulary needs no fp32 copy of all logits.
                for i in range(logits.size(0)):
                    loss_sum += torch.nn.functional.cross_entropy(
                        logits[i, :-1].float(), b["labels"][i, 1:], ignore_index=-100, reduction="sum")
                n_tok += int((batch["labels"][:, 1:] != -100).sum())
                n += batch["input_ids"].size(0)
            if n_tok == 0:
                raise AutoftError(f"the {split} split has no response tokens to evaluate",
                                  "check that examples have responses and seq_len leaves room for them")
            mean = (loss_sum / n_tok).item()
            return {"eval_loss": mean, "perplexity": ev.perplexity(mean), "tokens": n_tok, "examples": n}
        finally:
            model.train()

    def _multilabel_scores(self, split: str, y_true: list, probs: list) -> dict:
        """Multi-label metrics at the decision threshold, tuned here first on validation."""
        from autoft.autotrain import evaluate as ev

        y_true = [[int(round(x)) for x in row] for row in y_true]
        if split == "validation":
            self.threshold, _ = ev.tune_threshold(y_true, probs)
        out = ev.multilabel_metrics(y_true, ev.apply_threshold(probs, self.threshold), self.label_names)
        out["threshold"] = self.threshold
        return out
    def _evaluate_seq2seq(self, split: str, max_examples: int | None) -> dict:
        """Encoder-decoder: token-weighted cross-entropy of the targets (the decoder's logits line
        up with the labels: no shift). Same keys as generation."""
        from autoft.autotrain import evaluate as ev

        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        n_tok, n = 0, 0
        for _, batch in self._eval_batches(split, max_examples):
            b = self._to_device(batch)
            with self._autocast():
                logits = self.model(**b).logits
            for i in range(logits.size(0)):
                loss_sum += torch.nn.functional.cross_entropy(
                    logits[i].float(), b["labels"][i], ignore_index=-100, reduction="sum")
            n_tok += int((batch["labels"] != -100).sum())
            n += batch["input_ids"].size(0)
        if n_tok == 0:
            raise AutoftError(f"the {split} split has no target tokens to evaluate", "check the data's targets")
        mean = (loss_sum / n_tok).item()
        return {"eval_loss": mean, "perplexity": ev.perplexity(mean), "tokens": n_tok, "examples": n}

    def evaluate_generation(self, split: str = "test", max_examples: int | None = None,
                            max_new_tokens: int | None = None, batch_size: int | None = None,
                            on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Generate for a split (greedy, batched) and score the text against the references:
        ROUGE-1/2/L (summarization), BLEU and chrF (translation), ROUGE-L and exact match
        (generation). See `autoft.autotrain.textgen.evaluate_generation`."""
        from autoft.autotrain.textgen import evaluate_generation

        return evaluate_generation(self, split, max_examples=max_examples, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, on_progress=on_progress)

    def baseline_eval(self, split: str = "test", max_examples: int | None = None) -> dict:
        """What not fine-tuning gives. Classification: the majority class of the train split
        predicted for every example of `split` (same keys as evaluate(), loss None).
        Generation: the base model's eval_loss/perplexity on `split` - call it BEFORE training
        (raises if steps_done > 0). On the first `max_examples` (default: max_eval_examples)."""
        from autoft.autotrain import evaluate as ev

        limit = max_examples if max_examples is not None else self.max_eval_examples
        if self.multi_label:       # each label's majority value in train, for every row
            enc = self._encode(split)[:limit] if limit is not None else self._encode(split)
            train = [[int(x) for x in e["label"]] for e in self._encode("train")]
            return ev.multilabel_baseline(train, [[int(x) for x in e["label"]] for e in enc], self.label_names)
        if self.task == "classification":
            index = {n: i for i, n in enumerate(self.label_names)}
            train_labels = [index[str(r["label"])] for r in self.bundle.splits["train"]]
            enc = self._encode(split)
            if limit is not None:
                enc = enc[:limit]
            return ev.majority_baseline(train_labels, [e["label"] for e in enc], self.label_names)
        if self.steps_done > 0:
            raise RuntimeError("baseline_eval() for generation measures the base model: call it before train()")
        return self.evaluate(split, max_examples=limit)

    @torch.no_grad()
    def generate_samples(self, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy generations for user prompts, formatted like training (chat template or the
        prompt template); returns only the new text. Generation task only."""
        from autoft.autotrain.tasks import prompt_ids

        if self.task != "generation":
            raise RuntimeError("generate_samples() is for the generation task")
        model, tok = self.model, self.tokenizer
        model.eval()
        out = []
        try:
            for text in prompts:
                ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": text}])], device=self.device)
                with self._autocast():
                    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        finally:
            model.train()
        return out

    # -- checkpoints and outputs ---------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Everything needed to continue: trainable weights only (safetensors), optimizer,
        scheduler, RNG states, data position, steps_done, and the Trial's arguments (trial.json).
        Writes into `path` (created; files inside are replaced)."""
        return self._write_checkpoint(path, self._trainable_state(), self._training_state())

    def _training_state(self) -> dict:
        """Optimizer, scheduler, scaler and RNG states (distributed hook: gathered from the processes)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }

    def _write_checkpoint(self, path: str | os.PathLike, weights: dict, state: dict) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(path / "trainable.safetensors"))
        torch.save(state, path / "training_state.pt")
        meta = {"format": CHECKPOINT_FORMAT, "args": self.args, "steps_done": self.steps_done,
                "stream_position": self.stream.position, "samples_seen": self.samples_seen,
                "tokens_seen": self.tokens_seen, "history": self.history, "threshold": self.threshold}
        # Written last: a checkpoint without trial.json is incomplete (a kill mid-save).
        tmp = path / (TRIAL_META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path / TRIAL_META)
        return path

    def restore(self, path: str | os.PathLike) -> None:
        """Load a checkpoint written by save_checkpoint into this (freshly built, same
        configuration) Trial; training then continues exactly where it stopped."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = _checkpoint_meta(path)
        weights = load_file(str(path / "trainable.safetensors"), device=str(self.load_device or self.device))
        named = dict(self.model.named_parameters())
        missing = [n for n, p in named.items() if p.requires_grad and n not in weights]
        if missing or any(n not in named for n in weights):
            raise AutoftError(f"checkpoint {path} does not match this configuration",
                              "restore it with the arguments saved in its trial.json")
        self._load_trainable(weights)
        state = torch.load(path / "training_state.pt", map_location=self.load_device or self.device,
                           weights_only=False)
        self._load_optimizer(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self._load_rng(state["rng"])
        self.steps_done = meta["steps_done"]
        self.stream.position = meta["stream_position"]
        self.samples_seen, self.tokens_seen = meta["samples_seen"], meta["tokens_seen"]
        self.history = list(meta["history"])
        self.threshold = float(meta.get("threshold", 0.5))

    # distributed hooks: how the state gets into the (possibly sharded) model and optimizer
    def _load_trainable(self, weights: dict) -> None:
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                named[n].copy_(t)

    def _load_optimizer(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def _load_rng(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, bundle: Any, **overrides) -> "Trial":
        """Rebuild the Trial described by `path`/trial.json with `bundle` (overrides replace
        constructor arguments, e.g. device, total_steps, lr_schedule) and restore its state."""
        path = Path(path)
        args = _checkpoint_meta(path)["args"]
        args.update(overrides)
        source = args.pop("model_source")
        trial = cls(source, bundle, **args)
        trial.restore(path)
        return trial

    def save_model(self, out_dir: str | os.PathLike, merge: bool = False, state_dict: dict | None = None) -> Path:
        """The trained model in Hugging Face format, tokenizer and label mapping (id2label) too.
        lora/qlora: a PEFT adapter (`PeftModel.from_pretrained(base, out_dir)` loads it), or with
        merge=True merged full weights (the technique's `merge`; qlora reloads the base in the
        compute dtype, not 4-bit, and leaves the Trial as it was). full/freeze: save_pretrained
        (safetensors). After merge=True of a technique that merges in place (lora) the Trial
        cannot train further. `state_dict`: the weights to write instead of the model's own (a
        sharded model's, gathered)."""
        out = Path(out_dir)
        given = {"state_dict": state_dict} if state_dict is not None else {}
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self.info.peft and merge:
            model = self.info.module.merge(model, self.tech_config, self.task, self._load_base)
            if self.info.merge_in_place:
                self.model, self.merged = model, True
            model.save_pretrained(out, safe_serialization=True)
            if self.multi_label:
                (out / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.label_names)), **self._label_reading()}, indent=1))
        elif self.info.peft:
            if self.args["model_source"].lower().endswith(".gguf"):  # name the file, not its folder
                for cfg in model.peft_config.values():
                    cfg.base_model_name_or_path = self.args["model_source"]
            model.save_pretrained(out, safe_serialization=True, **given)
            if self.task == "classification":  # the adapter has no config.json: keep the mapping
                (out / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.label_names)),
                     "label2id": {n: i for i, n in enumerate(self.label_names)}, **self._label_reading()}, indent=1))
        else:
            model.save_pretrained(out, safe_serialization=True, **given)
            if self.multi_label:   # how to read the sigmoid outputs
                (out / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.label_names)), **self._label_reading()}, indent=1))
        self.tokenizer.save_pretrained(out)
        return out

    def _label_reading(self) -> dict:
        return {"problem_type": MULTI_LABEL, "threshold": self.threshold} if self.multi_label else {}

    def _load_base(self):
        """The base model again, unquantized in the compute dtype (what a merge goes into)."""
        from autoft.autotrain.models import load_model_and_tokenizer

        base, _ = load_model_and_tokenizer(self.args["model_source"], self.task, self.technique,
                                           label_names=self.label_names or None, precision=self.precision,
                                           device=str(self.device), quantization=False,
                                           trust_remote_code=self.args["trust_remote_code"],
                                           problem_type=self.args.get("problem_type") if self.task == "classification"
                                           else None)
        return base

    def close(self) -> None:
        """Drop the model, optimizer and data; gc.collect() and empty the CUDA cache."""
        for name in ("model", "train_module", "optimizer", "scheduler", "scaler", "params"):
            setattr(self, name, None)
        self._encoded = {}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- facts ---------------------------------------------------------------------------------
    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        seen, trainable, total = set(), 0, 0
        for p in self.model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 2 NF4 values/byte
            total += n
            trainable += n if p.requires_grad else 0
        return trainable, total


def _checkpoint_meta(path: Path) -> dict:
    if not is_complete(path):
        raise AutoftError(f"{path} is not a complete checkpoint (no {TRIAL_META})", "re-run that trial")
    return json.loads((path / TRIAL_META).read_text())


def _check_args(hparams: dict, task: str, lr_schedule: str, total_steps: int | None, batch_size: int,
                grad_accum: int, seq_len: int, precision: str, device: str, optimizer: str) -> None:
    """The Trial's arguments, checked before any model is loaded (one-line errors)."""
    unknown = sorted(set(hparams) - set(HPARAM_KEYS))
    if unknown:
        raise AutoftError(f"unknown hyperparameter(s) {', '.join(unknown)}", "use " + ", ".join(HPARAM_KEYS))
    check_choice("task", task, TASKS)
    check_choice("learning-rate schedule", lr_schedule, LR_SCHEDULES)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("precision", precision, ("fp32", "bf16", "fp16"))
    if lr_schedule != "constant" and not total_steps:
        raise AutoftError(f"the {lr_schedule} schedule needs total_steps", "pass total_steps")
    check_at_least("batch_size", batch_size, 1)
    check_at_least("grad_accum", grad_accum, 1)
    check_at_least("seq_len", seq_len, 8)
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise AutoftError("device cuda was asked for but no CUDA GPU is visible", "use --gpu cpu")
    if kind == "cpu" and precision != "fp32":
        raise AutoftError(f"precision {precision} needs a CUDA GPU", "use fp32 on the CPU")


def resolve_device(choice: str | None) -> str:
    """'auto' (or None): CUDA when a GPU is visible, else the CPU; anything else as given."""
    if choice and choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"
