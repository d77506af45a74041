"""Predicted training speed of one setup: FLOPs per token, seconds per step, time per epoch.

A pure function of a `ModelSpec`, a `TrainSetup` and the hardware's throughput (rules/gpus.toml);
no torch. The model, nanoGPT-style arithmetic with the why commented:

    FLOPs per token   forward 2 x (matmul weights) + attention's 4 x s x d per layer, backward only
                      through what needs it (input gradients 2x, weight gradients 2x for the
                      weights that train), plus one more forward with gradient checkpointing
    one micro-batch   max(host time, GPU time) + QLoRA's dequantisation
        GPU time      FLOPs / (peak x MFU)
        host time     Python/kernel-launch work per transformer block, the same for 1 or 100 tokens
    one step          accumulation x micro-batch + the optimizer's pass over the trainable weights

The max() (a smooth one, SpeedConstants.overlap_p) is the saturation curve in tokens per
micro-batch: while the host cannot queue kernels as fast as the GPU runs them, more tokens per
micro-batch cost little, so utilisation grows about linearly with tokens per micro-batch up to
`saturation_tokens()`, then levels off at the MFU. A micro-batch
of one short example leaves a large GPU mostly idle; one 2,048-token sequence already fills it.

Sources (the published rows and the fit are in benchmarks/data/published_throughput.json and
benchmarks/bench_speed_model.py):
- Kaplan et al. 2020 (arXiv:2001.08361) and Korthikanti et al. 2022 (arXiv:2205.05198): 2 FLOPs
  per weight per token forward, 4 backward; attention scores 4 x s x d per layer forward;
  full activation recomputation adds one forward. MosaicML llm-foundry's MFU/HFU definitions
  (scripts/train/benchmarking/README.md).
- MFU 40%: llm-foundry measures 40-46% MFU for 1-7B models at large micro-batches on A100/H100
  (bf16, flash attention); LitGPT's resource tables (A100, LoRA, Alpaca) reach the same order at
  micro-batch 4 (fitted here: see SpeedConstants).
- Host time per block: LitGPT's LoRA rows on one A100 take 74-142 ms per micro-batch of one Alpaca
  example whatever the model's width, 4-5 ms per transformer block, and barely more at
  micro-batch 2-4: the step is launch-bound, not compute-bound (tutorials/resource-tables.md).
- QLoRA: the same rows are 1.1-2x slower with bnb.nf4; modelled as extra memory traffic per
  quantised weight per pass (dequantise, then a 16-bit matmul), fitted on those rows.
- Gradient checkpointing: ms-swift's benchmark (Qwen-7B LoRA, A100) 4.31 samples/s with
  checkpointing vs 6.19 without (1.44x), what one more forward over a LoRA step's 4N FLOPs predicts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from autoft.advisor.memory import frozen_bottom_layers, layer_linears, lora_params
from autoft.advisor.spec import Hardware, ModelSpec, TrainSetup


@dataclass(frozen=True)
class SpeedConstants:
    """Assumed efficiencies. `mfu` comes from llm-foundry's measurements (the LitGPT rows hardly
    constrain it: they are mostly launch-bound); host_s_per_layer, overlap_p and
    nf4_bytes_per_param are fitted on LitGPT's rows by benchmarks/bench_speed_model.py --fit
    (median error 3.7%, worst 14%; benchmarks/results/speed_model.json)."""

    # share of the dense 16-bit peak reached once the GPU is busy (model FLOPs utilisation)
    mfu: float = 0.40
    # fp32 on a GPU: share of the non-tensor FP32 peak (no tensor cores in play)
    mfu_fp32: float = 0.60
    # host-side (Python, dispatch, kernel launch) seconds per transformer block per forward+backward
    host_s_per_layer: float = 4.2e-3
    # how host and device time overlap in one micro-batch: the p-norm of the two (p -> infinity is
    # max(), perfect overlap; p = 1 their sum). The GPU runs queued kernels while the host queues
    # more, but not perfectly: LitGPT's micro-batch-2 and -4 rows sit well above max().
    overlap_p: float = 2.0
    # QLoRA: bytes of memory traffic per quantised weight per pass (read NF4, write and read back
    # the 16-bit weight, bitsandbytes' own bookkeeping)
    nf4_bytes_per_param: float = 9.7
    # the optimizer step: fused AdamW reads weight, gradient and two states and writes three back
    # (fp32), gradient clipping reads the gradients once more: about 32 bytes per trainable weight
    optimizer_bytes_per_param: float = 32.0
    # the CPU, without a probe: effective fp32 GFLOP/s per core in a PyTorch training step of a
    # small model (what this model's FLOP count divided by the measured step time gives), and
    # memory bandwidth. Fitted on this project's 2-core machine, quiet, against `autoft run`'s
    # final runs with the advisor's own inputs (the data's estimated mean length), in
    # benchmarks/results/time_budget.json: MiniLM full fine-tune, 16 examples per step, on the
    # 8,530-row sst2 slice (76.6-81.6 examples/s: 41 GFLOP/s per core by this model) and banking77
    # (67.4-69.6: 40); SmolLM2-135M LoRA 4 x 4 on alpaca (1.18-1.27: 32). 36 predicts all three
    # within 16%. Earlier figures (2.5, then 15) were fitted on runs with tests running beside
    # them and before AdamW was fused on the CPU. A rough figure: CPUs differ by 10x, and small
    # matrices run further below peak; `autoft advise --measure` and the run's probe replace it
    # with a measured step time.
    cpu_gflops_per_core: float = 36.0
    # the optimizer's (and QLoRA's dequantisation's) memory traffic on the CPU: torch's fused
    # AdamW steps MiniLM's 22.3M weights in 0.028 s on one core here, 32 bytes per weight at 25 GB/s
    cpu_bandwidth_gbs: float = 25.0

    def to_dict(self) -> dict:
        return asdict(self)


CONSTANTS = SpeedConstants()


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
def block_matmul_params(spec: ModelSpec) -> int:
    """Weights of one transformer block's linear layers (each does a multiply-add per token)."""
    return sum(i * o for _, i, o in layer_linears(spec))


def head_matmul_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Weights the output head applies to every token: the LM head for generation; a
    classification head runs on one token per example (negligible, counted as 0)."""
    return spec.vocab_size * spec.hidden_size if setup.task == "generation" else 0


def backprop_layers(spec: ModelSpec, setup: TrainSetup) -> int:
    """Blocks the backward pass runs through: all of them, except freeze's frozen bottom layers
    (nothing below them trains, so autograd stops at the lowest trainable block)."""
    if setup.technique == "freeze":
        return spec.num_layers - frozen_bottom_layers(spec, setup)
    return spec.num_layers


def flops_per_token(spec: ModelSpec, setup: TrainSetup, tokens: float) -> dict[str, float]:
    """Training FLOPs per token, by phase: forward, backward, recompute (checkpointing), and
    their total. `tokens` is the sequence length attention spans (tokens per example)."""
    L, P = spec.num_layers, block_matmul_params(spec)
    d_q = spec.num_attention_heads * spec.head_size
    attn = 4.0 * tokens * d_q  # QK^T and AV, per layer per token (no causal halving)
    head = head_matmul_params(spec, setup)
    peft = setup.technique in ("lora", "qlora")
    lora = lora_params(spec, setup) if peft else 0
    n_bp = backprop_layers(spec, setup)
    weights_train = setup.technique in ("full", "freeze")

    forward = L * (2.0 * P + attn) + 2.0 * head + 2.0 * lora
    # backward per block: input gradients (2 per weight) always; weight gradients (2 more) where
    # the block's weights train; attention's backward is about twice its forward.
    per_block_bwd = (4.0 if weights_train else 2.0) * P + 2.0 * attn
    backward = n_bp * per_block_bwd + 4.0 * lora  # LoRA: A and B gradients + input gradients
    if head:
        # the LM head: input gradient always; weight gradient only in a full fine-tune
        backward += (4.0 if setup.technique == "full" else 2.0) * head
    recompute = n_bp * (2.0 * P + attn) if setup.gradient_checkpointing else 0.0
    return {"forward": forward, "backward": backward, "recompute": recompute,
            "total": forward + backward + recompute}


def trainable_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Weights the optimizer updates (what its step reads and writes)."""
    if setup.technique in ("lora", "qlora"):
        return lora_params(spec, setup)
    if setup.technique == "freeze":
        top = spec.num_layers - frozen_bottom_layers(spec, setup)
        return top * block_matmul_params(spec)
    return spec.params


# ---------------------------------------------------------------------------------------------
# The device
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    """What one device can do: peak FLOP/s in the training precision, memory bandwidth, and the
    share of the peak assumed reachable (with where the figures come from)."""

    name: str
    kind: str  # gpu | cpu
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    efficiency: float  # share of peak_flops a busy device reaches
    host_s_per_layer: float  # host time per block per forward+backward (0 on the CPU: it is the compute)
    source: str

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"{self.peak_flops / 1e9:.3g} GFLOP/s on the {self.name} ({self.source})"
        return f"{self.efficiency:.0%} of the {self.name}'s {self.peak_flops / 1e12:.3g} TFLOP/s {self.source}"


def device_throughput(hw: Hardware, precision: str, c: SpeedConstants = CONSTANTS) -> Throughput | None:
    """The throughput of the hardware planned for, or None for a GPU the table does not know."""
    if hw.kind == "cpu" or hw.gpu is None:
        cores = max(1, hw.cpu_cores)
        return Throughput(name=f"CPU ({cores} cores)", kind="cpu", peak_flops=cores * c.cpu_gflops_per_core * 1e9,
                          bandwidth=c.cpu_bandwidth_gbs * 1e9, efficiency=1.0, host_s_per_layer=0.0,
                          source=f"assumed {c.cpu_gflops_per_core:g} GFLOP/s per core in fp32; a measured "
                          "probe replaces it")
    from autoft.advisor.hardware import table_row

    row = table_row(hw.gpu.name)
    if row is None or "bf16_tflops" not in row:
        return None
    if precision == "bf16" and row["bf16_tflops"]:
        peak, eff, what = row["bf16_tflops"], c.mfu, "bf16 tensor"
    elif precision in ("bf16", "fp16"):
        peak, eff, what = row["fp16_tflops"], c.mfu, "fp16 tensor"
    else:
        peak, eff, what = row["fp32_tflops"], c.mfu_fp32, "fp32"
    return Throughput(name=row["name"], kind="gpu", peak_flops=peak * 1e12, bandwidth=row["bandwidth_gbs"] * 1e9,
                      efficiency=eff, host_s_per_layer=c.host_s_per_layer,
                      source=f"{what} peak ({row['throughput_source'].split(':')[0]}; the share as measured by "
                      "llm-foundry, launch time per layer fitted on LitGPT's runs)")


# ---------------------------------------------------------------------------------------------
# Step time
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepTime:
    """Predicted seconds of one optimizer step and what they come from."""

    micro_batch_s: float  # one micro-batch forward + backward
    host_s: float  # its host-side time
    compute_s: float  # its device compute time
    dequant_s: float  # QLoRA's dequantisation, per micro-batch
    optimizer_s: float  # the optimizer step
    step_s: float  # accumulation x micro_batch_s + optimizer_s
    examples_per_s: float
    tokens_per_s: float
    tokens_per_example: float
    utilisation: float  # achieved FLOP/s / peak FLOP/s
    bound: str  # "host" (launch-bound: more tokens per micro-batch are free) or "compute"

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def step_time(spec: ModelSpec, setup: TrainSetup, accumulation: int, tokens_per_example: float,
              dev: Throughput, c: SpeedConstants = CONSTANTS) -> StepTime:
    """Seconds per optimizer step of `setup` (micro-batch setup.batch_size, `accumulation`
    micro-batches per step) when examples average `tokens_per_example` tokens (length-grouped
    micro-batches: little padding, as autoft's trainer batches them)."""
    t = max(1.0, min(float(tokens_per_example), float(setup.seq_len)))
    tokens = setup.batch_size * t
    fl = flops_per_token(spec, setup, t)
    compute = tokens * fl["total"] / (dev.peak_flops * dev.efficiency)
    # host work per block: forward 1/3, backward 2/3 of a forward+backward; frozen blocks below
    # the lowest trainable one run forward only; checkpointing runs the forward again
    n_bp = backprop_layers(spec, setup)
    units = spec.num_layers / 3 + n_bp * 2 / 3 + (n_bp / 3 if setup.gradient_checkpointing else 0)
    host = dev.host_s_per_layer * units
    dequant = 0.0
    if setup.technique == "qlora":
        passes = 2 + (1 if setup.gradient_checkpointing else 0)  # forward, backward, recompute
        quantised = spec.num_layers * block_matmul_params(spec)
        dequant = passes * quantised * c.nf4_bytes_per_param / dev.bandwidth
    p = c.overlap_p if dev.kind == "gpu" else 1.0  # a CPU does its own launching: the two add up
    micro = _pnorm(host, compute, p) + dequant
    optimizer = trainable_params(spec, setup) * c.optimizer_bytes_per_param / dev.bandwidth
    step = accumulation * micro + optimizer
    examples = setup.batch_size * accumulation
    achieved = accumulation * tokens * fl["total"] / step
    return StepTime(micro_batch_s=micro, host_s=host, compute_s=compute, dequant_s=dequant,
                    optimizer_s=optimizer, step_s=step, examples_per_s=examples / step,
                    tokens_per_s=examples * t / step, tokens_per_example=t,
                    utilisation=achieved / dev.peak_flops, bound="host" if host > compute else "compute")


def _pnorm(a: float, b: float, p: float) -> float:
    """(a^p + b^p)^(1/p), computed without overflow (p large: max(a, b))."""
    m = max(a, b)
    return 0.0 if m <= 0 else m * ((a / m) ** p + (b / m) ** p) ** (1 / p)


def saturation_tokens(spec: ModelSpec, setup: TrainSetup, dev: Throughput, tokens_per_example: float) -> float:
    """Tokens per micro-batch at which the device stops waiting on the host (the knee of the
    saturation curve): below it, utilisation grows linearly with tokens per micro-batch."""
    n_bp = backprop_layers(spec, setup)
    units = spec.num_layers / 3 + n_bp * 2 / 3 + (n_bp / 3 if setup.gradient_checkpointing else 0)
    per_token = flops_per_token(spec, setup, tokens_per_example)["total"] / (dev.peak_flops * dev.efficiency)
    return dev.host_s_per_layer * units / per_token if per_token > 0 else math.inf


def epoch_seconds(step: StepTime, examples: int, effective_batch: int) -> float:
    """Seconds for one pass over `examples` training examples at `effective_batch` per step."""
    return math.ceil(max(1, examples) / max(1, effective_batch)) * step.step_s


@dataclass
class SpeedPrediction:
    """What `autoft advise` reports: the predicted speed of a recommended setting."""

    examples_per_s: float
    step_s: float
    epoch_s: float | None  # None when the data size is unknown
    tokens_per_example: float
    tokens_assumed: str  # where tokens_per_example comes from
    utilisation: float
    bound: str
    device: str
    assumption: str  # the efficiency assumed and its source
    method: str = "model"  # "model" (FLOPs x assumed efficiency) or "probe" (measured steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("examples_per_s", "step_s", "epoch_s", "tokens_per_example", "utilisation"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        return d


def tokens_per_example(seq_len: int, mean_tokens: float | None) -> tuple[float, str]:
    """Tokens an average example trains on, and where the figure comes from."""
    if mean_tokens:
        t = min(float(mean_tokens), float(seq_len))
        return t, f"the data's mean length, {t:.0f} tokens" + (" (capped at seq_len)" if mean_tokens > seq_len else "")
    return float(seq_len), f"example lengths unknown: every example assumed to fill the {seq_len}-token window"


def predict(spec: ModelSpec, setup: TrainSetup, accumulation: int, hw: Hardware, mean_tokens: float | None = None,
            data_size: int | None = None, gpus: int = 1, c: SpeedConstants = CONSTANTS) -> SpeedPrediction | None:
    """Predicted speed of one setting on `hw`, or None when the GPU's throughput is unknown.
    Data parallel over `gpus` GPUs: each runs the micro-batches of its share (no communication
    cost counted)."""
    dev = device_throughput(hw, setup.precision if hw.kind == "gpu" else "fp32", c)
    if dev is None:
        return None
    t, why = tokens_per_example(setup.seq_len, mean_tokens)
    st = step_time(spec, setup, accumulation, t, dev, c)
    eff_batch = setup.batch_size * accumulation * max(1, gpus)
    eps = st.examples_per_s * max(1, gpus)
    epoch = math.ceil(data_size / eff_batch) * st.step_s if data_size else None
    return SpeedPrediction(examples_per_s=eps, step_s=st.step_s, epoch_s=epoch, tokens_per_example=t,
                           tokens_assumed=why, utilisation=st.utilisation, bound=st.bound, device=dev.name,
                           assumption=dev.describe())


def fmt_duration(seconds: float) -> str:
    """12 -> '12 s', 330 -> '5.5 min', 7200 -> '2.0 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["SpeedConstants", "CONSTANTS", "flops_per_token", "trainable_params", "Throughput", "device_throughput",
           "StepTime", "step_time", "saturation_tokens", "epoch_seconds", "SpeedPrediction", "predict",
           "tokens_per_example", "fmt_duration"]
