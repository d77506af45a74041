"""`autoft probe`: this machine's GPUs (or CPU, with the reason), or the hardware you plan for."""
from __future__ import annotations

import argparse
import json

HELP = "show this machine's GPUs (memory, bf16, compute capability, driver, MIG) or its CPU and RAM"
EXAMPLES = """\
  autoft probe                             # GPUs visible to this process (CUDA_VISIBLE_DEVICES honoured)
  autoft probe --json                      # the same as JSON (what `autoft advise` plans with)
  autoft probe --gpu T4                    # the T4 from the GPU table: 15.00 GiB, no bf16
  autoft probe --gpu a100 --gpus 4         # four A100-40GB
  autoft probe --gpu-memory 24GiB          # a generic 24 GiB GPU (when this machine has none)
  CUDA_VISIBLE_DEVICES=GPU-8f1e2a3b autoft probe   # only that GPU, matched by UUID
"""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", default="auto", metavar="NAME",
                        help="auto (probe this machine, default), cpu, or a GPU from the table: T4, L4, A10G, "
                             "A100-40GB, A100-80GB, H100-80GB, H200, RTX-4090, ... (case and dashes do not matter)")
    parser.add_argument("--gpu-memory", default=None, metavar="SIZE",
                        help="plan with this much GPU memory, e.g. 24GiB or 16GB (GB = 10^9 bytes, GiB = 2^30)")
    parser.add_argument("--gpus", type=_positive_int, default=None, metavar="N",
                        help="number of GPUs to plan for (default: as probed, 1 for a named GPU)")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


def hardware_json(hw) -> dict:
    """Hardware.to_dict() plus the same sizes in GiB (a number always carries its unit)."""
    from autoft.advisor.units import gib

    d = hw.to_dict()
    for g in d["gpus"]:
        g["memory_gib"] = round(gib(g["memory_bytes"]), 2)
        g["free_gib"] = None if g["free_bytes"] is None else round(gib(g["free_bytes"]), 2)
    d["ram_gib"] = round(gib(hw.ram_bytes), 2)
    d["usable_memory_gib"] = round(gib(hw.memory_bytes), 2)
    return d


def fact_sheet(hw) -> str:
    """Readable lines for a Hardware."""
    from autoft.advisor.units import fmt_gib

    src = {"probe": "probed", "table": "planned: from the GPU table, not probed",
           "manual": "planned: memory given by hand", "none": "unknown"}[hw.source]
    lines = []
    if hw.kind == "cpu":
        lines.append(f"hardware: CPU only ({hw.reason or 'no GPU'})")
        lines.append(f"  CPU   {hw.cpu_cores} cores, {fmt_gib(hw.ram_bytes, 1)} RAM")
        lines.append("  training on the CPU runs in fp32 and suits small models (up to a few hundred M parameters)")
        return "\n".join(lines)
    n = len(hw.gpus)
    lines.append(f"hardware: {n} GPU{'s' if n != 1 else ''} ({src})")
    for i, g in enumerate(hw.gpus):
        lines.append(f"  GPU {i}: {g.name}")
        mem = fmt_gib(g.memory_bytes) + " total"
        if g.free_bytes is not None:
            mem += f", {fmt_gib(g.free_bytes)} free"
        lines.append(f"    memory   {mem}")
        cc = f" (compute capability {g.compute_capability})" if g.compute_capability else ""
        lines.append(f"    bf16     {'yes' if g.bf16 else 'no, fp16 instead'}{cc}")
        if hw.source == "probe":
            lines.append(f"    MIG      {'on' if g.mig else 'off'}")
        if g.uuid:
            lines.append(f"    uuid     {g.uuid}")
    if hw.driver_version or hw.cuda_version:
        lines.append(f"  driver {hw.driver_version or '?'}, CUDA {hw.cuda_version or '?'} (highest the driver supports)")
    lines.append(f"  CPU   {hw.cpu_cores} cores, {fmt_gib(hw.ram_bytes, 1)} RAM")
    return "\n".join(lines)


def run(args) -> int:
    from autoft.advisor.hardware import plan_hardware

    hw = plan_hardware(args.gpu, gpu_memory=args.gpu_memory, gpus=args.gpus)
    if args.json:
        print(json.dumps(hardware_json(hw), indent=2))
    else:
        print(fact_sheet(hw))
    return 0
