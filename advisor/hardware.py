"""What training will run on: probe this machine (NVML), or plan for a GPU from the table.

No torch here: the probe talks to the NVIDIA driver through nvidia-ml-py (`pynvml`), imported
lazily, so that `autoft probe` answers in milliseconds and never initialises CUDA. NVML numbers
GPUs by PCI bus order while CUDA (and torch) may order them differently, so CUDA_VISIBLE_DEVICES
is matched to NVML handles by UUID, not by index.

    probe() -> Hardware                     # this machine; CPU facts + reason when no GPU is usable
    gpu_table() -> dict[str, GPU]           # rules/gpus.toml
    plan_hardware(gpu="auto"|"cpu"|NAME, gpu_memory="24GiB"|None, gpus=N|None) -> Hardware
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from functools import lru_cache

from autoft.advisor.spec import GPU, Hardware
from autoft.advisor.units import GIB, MIB, parse_size
from autoft.errors import AutoftError

# ----------------------------------------------------------------------------- CPU facts


def cpu_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def ram_bytes() -> int:
    """Total physical memory in bytes (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # the file says kB, meaning KiB
    except OSError:
        pass
    return 0


def cpu_hardware(reason: str, source: str = "probe") -> Hardware:
    return Hardware(kind="cpu", gpus=[], cpu_cores=cpu_cores(), ram_bytes=ram_bytes(), source=source,
                    reason=reason)


# ----------------------------------------------------------------------------- NVML probe


def _text(value) -> str:
    # Old nvidia-ml-py versions return bytes, new ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of entries; None when unset (all devices visible)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = [e.strip() for e in raw.split(",")]
    out: list[str] = []
    for e in entries:
        # CUDA stops at the first invalid entry; "-1" (or an empty value) hides every device.
        if e == "" or e.startswith("-"):
            break
        out.append(e)
    return out


def _cuda_order(nv, devices: list[tuple[object, str]]) -> list[tuple[object, str]]:
    """NVML lists GPUs in PCI bus order; CUDA (and torch's cuda:N) does too only with
    CUDA_DEVICE_ORDER=PCI_BUS_ID. Its default, FASTEST_FIRST, puts faster GPUs first; we approximate
    that by compute capability, newest first, keeping PCI order among equals (the exact ranking is
    CUDA's own heuristic). On a machine of identical GPUs both orders are the same."""
    if os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").upper() == "PCI_BUS_ID":
        return devices

    def cc(d):
        try:
            return tuple(nv.nvmlDeviceGetCudaComputeCapability(d[0]))
        except Exception:
            return (0, 0)

    return sorted(devices, key=cc, reverse=True)  # sorted() is stable


def _select_visible(nv, devices: list[tuple[object, str]]) -> tuple[list[tuple[object, str]], str | None]:
    """Filter [(handle, uuid)] by CUDA_VISIBLE_DEVICES. Returns (visible, note)."""
    entries = _visible_entries()
    if entries is None:
        return devices, None
    chosen: list[tuple[object, str]] = []
    for e in entries:
        low = e.lower()
        if e.isdigit():
            # An index counts in CUDA's order (see _cuda_order), not NVML's.
            i = int(e)
            if i >= len(devices):
                break
            chosen.append(devices[i])
            continue
        if low.startswith("mig-"):
            # A MIG instance: find its handle by UUID among each GPU's MIG devices.
            mig = _find_mig(nv, devices, low)
            if mig is None:
                break
            chosen.append(mig)
            continue
        # "GPU-<uuid>" or a unique prefix of it (CUDA accepts prefixes), with or without "GPU-".
        want = low if low.startswith("gpu-") else "gpu-" + low
        hits = [d for d in devices if d[1].lower().startswith(want)]
        if len(hits) != 1:
            break
        chosen.append(hits[0])
    return chosen, f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"


def _mig_instances(nv, handle) -> list[tuple[object, str]]:
    """[(handle, uuid)] of the MIG instances of a GPU in MIG mode; [] otherwise."""
    try:
        if not nv.nvmlDeviceGetMigMode(handle)[0]:
            return []
        count = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:
        return []
    out = []
    for j in range(count):
        try:
            mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)  # raises for an empty slot
            out.append((mh, _text(nv.nvmlDeviceGetUUID(mh))))
        except Exception:
            continue
    return out


def _find_mig(nv, devices, want_uuid: str):
    for handle, _ in devices:
        try:
            count = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
        except Exception:
            continue
        for j in range(count):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                uuid = _text(nv.nvmlDeviceGetUUID(mh))
            except Exception:
                continue
            if uuid.lower().startswith(want_uuid):
                return mh, uuid
    return None


def _gpu_from_handle(nv, handle, uuid: str) -> GPU:
    mem = nv.nvmlDeviceGetMemoryInfo(handle)
    name = _text(nv.nvmlDeviceGetName(handle))
    cc = None
    try:
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        cc = f"{major}.{minor}"
    except Exception:
        # A MIG handle may not answer: ask its parent GPU.
        try:
            parent = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(parent)
            cc = f"{major}.{minor}"
        except Exception:
            major = None
    mig = uuid.lower().startswith("mig-")
    if not mig:
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
            mig = bool(current)
        except Exception:  # not supported on this GPU
            mig = False
    bf16 = cc is not None and int(cc.split(".")[0]) >= 8
    return GPU(name=name, memory_bytes=int(mem.total), free_bytes=int(mem.free), bf16=bf16,
               compute_capability=cc, uuid=uuid, mig=mig)


def probe() -> Hardware:
    """This machine's visible NVIDIA GPUs, or its CPU with the reason no GPU is used. Never raises."""
    try:
        import pynvml as nv  # nvidia-ml-py
    except ImportError:
        return cpu_hardware("nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        nv.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ... or no libnvidia-ml
        kind = type(err).__name__
        if "LibraryNotFound" in kind:
            why = "no NVIDIA driver found: libnvidia-ml is missing"
        elif "DriverNotLoaded" in kind:
            why = "the NVIDIA driver is not loaded"
        else:
            why = f"the NVIDIA driver did not answer ({_text(err) or kind})"
        return cpu_hardware(why)
    try:
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        try:
            v = int(nv.nvmlSystemGetCudaDriverVersion())  # e.g. 12040 -> "12.4"
            cuda = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            cuda = None
        devices = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            devices.append((h, _text(nv.nvmlDeviceGetUUID(h))))
        if not devices:
            return cpu_hardware("the NVIDIA driver is loaded but reports no GPU")
        devices = _cuda_order(nv, devices)
        visible, note = _select_visible(nv, devices)
        if note is None:
            # Without CUDA_VISIBLE_DEVICES, CUDA sees a MIG-mode GPU as its MIG instances, not as the
            # whole GPU: plan with an instance's memory.
            visible = [inst for d in visible for inst in (_mig_instances(nv, d[0]) or [d])]
        if not visible:
            return cpu_hardware(f"no GPU is visible ({note})")
        gpus = [_gpu_from_handle(nv, h, u) for h, u in visible]
    except Exception as err:  # a driver error mid-probe must not crash the advisor
        return cpu_hardware(f"the NVIDIA driver failed while probing ({type(err).__name__}: {_text(err)})")
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass
    return Hardware(kind="gpu", gpus=gpus, cpu_cores=cpu_cores(), ram_bytes=ram_bytes(),
                    driver_version=driver, cuda_version=cuda, source="probe")


# ----------------------------------------------------------------------------- GPU table

_PREFIXES = ("nvidia", "tesla", "geforce", "quadro")


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx4090'; 'A100 80GB' -> 'a10080gb'."""
    s = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    while s and s[0] in _PREFIXES:
        s = s[1:]
    return "".join(s)


@lru_cache(maxsize=1)
def _table_rows() -> tuple[dict, ...]:
    from autoft.rules import load_toml

    return tuple(load_toml("gpus.toml")["gpu"])


def gpu_table() -> dict[str, GPU]:
    """Name -> GPU for every row of rules/gpus.toml (memory as the driver reports it)."""
    return {r["name"]: _row_gpu(r) for r in _table_rows()}


def _row_gpu(r: dict) -> GPU:
    return GPU(name=r["name"], memory_bytes=int(r["reported_mib"]) * MIB, bf16=bool(r["bf16"]),
               compute_capability=str(r["cc"]))


@lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for r in _table_rows():
        for spelling in [r["name"], *r.get("aliases", [])]:
            index.setdefault(normalize_gpu_name(spelling), r["name"])
    return index


def lookup_gpu(name: str) -> GPU | None:
    """A table GPU by a forgiving name ('a100', 'RTX 4090', 'NVIDIA H100 80GB HBM3'), else None."""
    index = _name_index()
    key = normalize_gpu_name(name)
    if not key:
        return None
    hit = index.get(key)
    if hit is None:
        # Drop form-factor words that do not change memory: "h100sxm5" -> "h100", "a100pcie80gb" -> "a10080gb".
        stripped = re.sub(r"(sxm\d?|pcie|hbm\d?e?|nvlink)", "", key)
        hit = index.get(stripped)
    if hit is None:
        return None
    return gpu_table()[hit]


def table_row(name: str) -> dict | None:
    """The rules/gpus.toml row of a GPU named in any spelling lookup_gpu accepts (its throughput
    figures, sources and all), else None."""
    gpu = lookup_gpu(name)
    if gpu is None:
        return None
    return next(dict(r) for r in _table_rows() if r["name"] == gpu.name)


def find_gpu(name: str) -> GPU:
    """Like lookup_gpu, but an unknown name is a user error that lists the table."""
    gpu = lookup_gpu(name)
    if gpu is None:
        names = ", ".join(r["name"] for r in _table_rows())
        raise AutoftError(f"unknown GPU {name!r}",
                          f"use one of {names}, or --gpu-memory SIZE for any other GPU")
    return gpu


# ----------------------------------------------------------------------------- planning


def _count(gpus: int | None) -> int | None:
    if gpus is None:
        return None
    if int(gpus) < 1:
        raise AutoftError(f"--gpus must be 1 or more, got {gpus}", "pass --gpus 1 (or leave it out)")
    return int(gpus)


def _replicate(gpus: list[GPU], n: int | None) -> list[GPU]:
    """Exactly n GPUs: the first n, or copies of the first when asking for more than exist."""
    if n is None:
        return gpus
    if n <= len(gpus):
        return gpus[:n]
    return gpus + [replace(gpus[0]) for _ in range(n - len(gpus))]


def _generic_gpu(memory: int, name: str | None = None) -> GPU:
    # Name it by its size; bf16 is assumed (any GPU sold since 2020 has it) unless a known
    # name says otherwise.
    known = lookup_gpu(name) if name else None
    return GPU(name=name or f"GPU ({memory / GIB:.1f} GiB)", memory_bytes=memory,
               bf16=known.bf16 if known else True,
               compute_capability=known.compute_capability if known else None)


def plan_hardware(gpu: str | None = "auto", gpu_memory: str | int | None = None,
                  gpus: int | None = None) -> Hardware:
    """The hardware to plan for.

    gpu: "auto" probes this machine, "cpu" plans for the CPU, any other value is a table name.
    gpu_memory: a size ("24GiB", "16GB") that replaces the GPU's memory; with no GPU (cpu, or
        auto on a machine without one) it plans a generic GPU of that size.
    gpus: how many GPUs (memory is per GPU); None keeps the probed count (1 for a table GPU).
    """
    n = _count(gpus)
    memory = parse_size(gpu_memory) if gpu_memory not in (None, "") else None
    choice = (gpu or "auto").strip()
    low = choice.lower()

    if low in ("auto", "cpu"):
        hw = probe() if low == "auto" else cpu_hardware("asked for the CPU (--gpu cpu)", source="manual")
        if memory is None:
            if hw.kind == "gpu":
                hw.gpus = _replicate(hw.gpus, n)
            return hw
        if hw.kind == "gpu":
            # Keep the probed GPU's facts (bf16, name) but plan with the given memory.
            hw.gpus = [replace(g, memory_bytes=memory, free_bytes=None) for g in _replicate(hw.gpus, n)]
            hw.source = "manual"
            return hw
        return Hardware(kind="gpu", gpus=_replicate([_generic_gpu(memory)], n or 1),
                        cpu_cores=hw.cpu_cores, ram_bytes=hw.ram_bytes, source="manual")

    base = find_gpu(choice)
    if memory is not None:
        base = replace(base, memory_bytes=memory)
    return Hardware(kind="gpu", gpus=_replicate([base], n or 1), cpu_cores=cpu_cores(),
                    ram_bytes=ram_bytes(), source="manual" if memory is not None else "table")
