"""Hardware probe (through a fake NVML module; no GPU here), GPU table and planning."""
from __future__ import annotations

import sys
import types

import pytest

from autoft.advisor import hardware
from autoft.advisor.hardware import find_gpu, gpu_table, lookup_gpu, plan_hardware, probe
from autoft.advisor.units import GIB, MIB
from autoft.errors import AutoftError


# ----------------------------------------------------------------------------- a fake pynvml


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class _Mem:
    def __init__(self, total, free):
        self.total, self.free, self.used = total, free, total - free


def fake_nvml(gpus, *, init_error=None, driver="550.54.15", cuda=12040):
    """A module shaped like nvidia-ml-py's pynvml. gpus: dicts with name, uuid, total, free, cc,
    mig (bool) and optional migs: list of dicts (uuid, name, total, free)."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    state = {"init": 0, "shutdown": 0}
    nv.state = state

    def init():
        if init_error is not None:
            raise init_error
        state["init"] += 1

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    nv.nvmlSystemGetDriverVersion = lambda: driver
    nv.nvmlSystemGetCudaDriverVersion = lambda: cuda
    nv.nvmlDeviceGetCount = lambda: len(gpus)
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)

    def dev(h):
        if h[0] == "gpu":
            return gpus[h[1]]
        return gpus[h[1]]["migs"][h[2]]

    nv.nvmlDeviceGetName = lambda h: dev(h)["name"].encode()  # old versions return bytes
    nv.nvmlDeviceGetUUID = lambda h: dev(h)["uuid"]
    nv.nvmlDeviceGetMemoryInfo = lambda h: _Mem(dev(h)["total"], dev(h)["free"])

    def cc(h):
        if h[0] != "gpu":
            raise NVMLError("Not Supported")
        return gpus[h[1]]["cc"]

    nv.nvmlDeviceGetCudaComputeCapability = cc
    nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle = lambda h: ("gpu", h[1])

    def mig_mode(h):
        if "mig" not in dev(h):
            raise NVMLError("Not Supported")
        return (1 if dev(h)["mig"] else 0, 0)

    nv.nvmlDeviceGetMigMode = mig_mode
    nv.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(dev(h).get("migs", []))
    nv.nvmlDeviceGetMigDeviceHandleByIndex = lambda h, j: ("mig", h[1], j)
    return nv


H100 = dict(name="NVIDIA H100 80GB HBM3", uuid="GPU-aaaa1111-0000-0000-0000-000000000000",
            total=81559 * MIB, free=80000 * MIB, cc=(9, 0), mig=False)
T4 = dict(name="Tesla T4", uuid="GPU-bbbb2222-0000-0000-0000-000000000000",
          total=15360 * MIB, free=15000 * MIB, cc=(7, 5))
A100_MIG = dict(name="NVIDIA A100-SXM4-40GB", uuid="GPU-cccc3333-0000-0000-0000-000000000000",
                total=40960 * MIB, free=40000 * MIB, cc=(8, 0), mig=True,
                migs=[dict(name="NVIDIA A100-SXM4-40GB MIG 3g.20gb", uuid="MIG-dddd4444-1111-2222-3333-444444444444",
                           total=19968 * MIB, free=19000 * MIB)])


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml; returns a function that sets its GPUs."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def install(gpus, **kw):
        mod = fake_nvml(gpus, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


def test_probe_reads_every_gpu(nvml):
    mod = nvml([H100, T4])
    hw = probe()
    assert hw.kind == "gpu" and hw.source == "probe"
    assert [g.name for g in hw.gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    h, t = hw.gpus
    assert h.memory_bytes == 81559 * MIB and h.free_bytes == 80000 * MIB
    assert h.bf16 and h.compute_capability == "9.0" and not h.mig
    assert not t.bf16 and t.compute_capability == "7.5" and not t.mig  # MIG not supported: False
    assert hw.driver_version == "550.54.15" and hw.cuda_version == "12.4"
    assert hw.memory_bytes == 80000 * MIB  # free memory of the first GPU
    assert mod.state["shutdown"] == 1
    assert hw.cpu_cores >= 1 and hw.ram_bytes > 0


def test_cuda_visible_devices_by_uuid_and_prefix(nvml, monkeypatch):
    nvml([H100, T4])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", T4["uuid"])
    assert [g.name for g in probe().gpus] == ["Tesla T4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb2222,GPU-aaaa1111")  # prefixes, reordered
    assert [g.uuid for g in probe().gpus] == [T4["uuid"], H100["uuid"]]


def test_cuda_visible_devices_by_index(nvml, monkeypatch):
    nvml([H100, T4])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.name for g in probe().gpus] == ["Tesla T4"]
    # CUDA stops at the first invalid entry: "0,7,1" shows only device 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,7,1")
    assert [g.name for g in probe().gpus] == ["NVIDIA H100 80GB HBM3"]


@pytest.mark.parametrize("value", ["", "-1"])
def test_cuda_visible_devices_none(nvml, monkeypatch, value):
    nvml([H100])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    hw = probe()
    assert hw.kind == "cpu" and hw.gpus == []
    assert "CUDA_VISIBLE_DEVICES" in hw.reason


def test_cuda_device_order(nvml, monkeypatch):
    nvml([T4, H100])  # PCI order: the T4 first
    # CUDA's default FASTEST_FIRST: the H100 is cuda:0.
    assert [g.name for g in probe().gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [g.name for g in probe().gpus] == ["NVIDIA H100 80GB HBM3"]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert [g.name for g in probe().gpus] == ["Tesla T4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", H100["uuid"])  # a UUID means the same GPU in any order
    assert [g.name for g in probe().gpus] == ["NVIDIA H100 80GB HBM3"]


def test_mig_instance_by_uuid(nvml, monkeypatch):
    nvml([A100_MIG, H100])
    hw = probe()
    # Without CUDA_VISIBLE_DEVICES a MIG-mode GPU shows as its instances (what CUDA sees).
    # (CUDA's default order puts the H100, compute capability 9.0, first.)
    assert [g.name for g in hw.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB MIG 3g.20gb"]
    assert hw.gpus[1].mig and hw.gpus[1].memory_bytes == 19968 * MIB and not hw.gpus[0].mig
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", A100_MIG["uuid"])  # the parent asked for by UUID
    (g,) = probe().gpus
    assert g.mig and g.memory_bytes == 40960 * MIB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-dddd4444-1111-2222-3333-444444444444")
    hw = probe()
    (g,) = hw.gpus
    assert g.mig and g.memory_bytes == 19968 * MIB and g.name.endswith("3g.20gb")
    assert g.compute_capability == "8.0" and g.bf16  # read from the parent GPU


def test_library_missing_gives_cpu_with_reason(nvml):
    nvml([], init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    hw = probe()
    assert hw.kind == "cpu" and hw.gpus == [] and "driver" in hw.reason
    assert hw.cpu_cores >= 1 and hw.ram_bytes > 0


def test_zero_devices_gives_cpu(nvml):
    nvml([])
    hw = probe()
    assert hw.kind == "cpu" and "no GPU" in hw.reason


def test_no_pynvml_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    hw = probe()
    assert hw.kind == "cpu" and "nvidia-ml-py" in hw.reason


def test_driver_error_mid_probe_is_not_a_crash(nvml):
    mod = nvml([H100])

    def boom(h):
        raise NVMLError("GPU is lost")

    mod.nvmlDeviceGetMemoryInfo = boom
    hw = probe()
    assert hw.kind == "cpu" and "GPU is lost" in hw.reason
    assert mod.state["shutdown"] == 1


def test_probe_on_this_machine_never_raises():
    hw = probe()
    assert hw.kind in ("gpu", "cpu")
    assert hw.kind == "gpu" or hw.reason


# ----------------------------------------------------------------------------- table


def test_table_has_required_gpus():
    table = gpu_table()
    for name in ["A100-40GB", "A100-80GB", "H100-80GB", "H200", "L4", "L40S", "A10G", "T4",
                 "V100-16GB", "V100-32GB", "RTX-3090", "RTX-4090"]:
        assert name in table, name


@pytest.mark.parametrize("name, expect", [
    ("T4", (14.5, 16.0, False, "7.5")),
    ("V100-16GB", (15.0, 16.0, False, "7.0")),
    ("A100-40GB", (39.0, 40.0, True, "8.0")),
    ("A100-80GB", (79.0, 80.0, True, "8.0")),
    ("H100-80GB", (79.0, 80.0, True, "9.0")),
    ("H200", (135.0, 141.0, True, "9.0")),
    ("L4", (21.5, 24.0, True, "8.9")),
    ("RTX-4090", (23.0, 24.0, True, "8.9")),
])
def test_table_rows(name, expect):
    lo, hi, bf16, cc = expect
    g = gpu_table()[name]
    assert lo <= g.memory_bytes / GIB <= hi
    assert g.bf16 is bf16 and g.compute_capability == cc


def test_table_bf16_follows_compute_capability():
    for g in gpu_table().values():
        assert g.bf16 == (float(g.compute_capability) >= 8.0), g.name


@pytest.mark.parametrize("spelling, name", [
    ("a100", "A100-40GB"), ("A100 80GB", "A100-80GB"), ("rtx4090", "RTX-4090"), ("RTX 4090", "RTX-4090"),
    ("h100", "H100-80GB"), ("NVIDIA H100 80GB HBM3", "H100-80GB"), ("Tesla T4", "T4"), ("t4", "T4"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA GeForce RTX 3090", "RTX-3090"), ("l40s", "L40S"),
    ("Tesla V100-SXM2-32GB", "V100-32GB"), ("h200", "H200"), ("a10g", "A10G"),
])
def test_forgiving_names(spelling, name):
    assert lookup_gpu(spelling).name == name


def test_unknown_gpu_lists_the_table():
    with pytest.raises(AutoftError) as err:
        find_gpu("Voodoo 5")
    msg = str(err.value)
    assert "Voodoo 5" in msg and "A100-40GB" in msg and "RTX-4090" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- planning


def test_plan_named_gpu():
    hw = plan_hardware("T4")
    assert hw.kind == "gpu" and hw.source == "table" and len(hw.gpus) == 1
    assert hw.gpu.name == "T4" and not hw.gpu.bf16 and hw.gpu.free_bytes is None
    assert hw.memory_bytes == gpu_table()["T4"].memory_bytes


def test_plan_named_gpu_count_and_memory_override():
    hw = plan_hardware("a100", gpu_memory="20GiB", gpus=4)
    assert len(hw.gpus) == 4 and all(g.memory_bytes == 20 * GIB for g in hw.gpus)
    assert hw.gpu.bf16 and hw.source == "manual"


def test_plan_cpu(nvml):
    nvml([H100])
    hw = plan_hardware("cpu")
    assert hw.kind == "cpu" and hw.gpus == [] and "cpu" in hw.reason.lower()


def test_plan_memory_without_gpu_gives_generic_gpu(nvml):
    nvml([], init_error=NVMLError_LibraryNotFound("missing"))
    hw = plan_hardware("auto", gpu_memory="24GiB")
    assert hw.kind == "gpu" and hw.gpu.memory_bytes == 24 * GIB and hw.gpu.bf16
    assert "24.0 GiB" in hw.gpu.name
    hw = plan_hardware("cpu", gpu_memory="16GB", gpus=2)
    assert len(hw.gpus) == 2 and hw.gpu.memory_bytes == 16 * 10**9


def test_plan_auto_probes(nvml):
    nvml([H100, T4])
    assert [g.name for g in plan_hardware("auto").gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert len(plan_hardware("auto", gpus=1).gpus) == 1
    hw = plan_hardware("auto", gpu_memory="40GiB")
    assert hw.gpu.memory_bytes == 40 * GIB and hw.gpu.free_bytes is None and hw.gpu.bf16


@pytest.mark.parametrize("kwargs", [dict(gpu="Voodoo"), dict(gpu="T4", gpu_memory="lots"),
                                    dict(gpu="T4", gpus=0)])
def test_plan_bad_input(kwargs):
    with pytest.raises(AutoftError):
        plan_hardware(**kwargs)


def test_no_torch_import():
    assert "torch" not in vars(hardware)


# ----------------------------------------------------------------------------- `autoft probe`


def test_cli_probe_fact_sheet_gpus(nvml, capsys):
    import autoft.cli as cli

    nvml([H100, T4])
    assert cli.main(["probe"]) == 0
    out = capsys.readouterr().out
    assert "2 GPUs (probed)" in out and "NVIDIA H100 80GB HBM3" in out and "Tesla T4" in out
    assert "79.65 GiB total, 78.12 GiB free" in out  # 81559 MiB and 80000 MiB
    assert "compute capability 9.0" in out and "no, fp16 instead (compute capability 7.5)" in out
    assert "MIG      off" in out and "driver 550.54.15, CUDA 12.4" in out


def test_cli_probe_json(nvml, capsys, monkeypatch):
    import json

    import autoft.cli as cli

    nvml([A100_MIG])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", A100_MIG["uuid"])
    assert cli.main(["probe", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "gpu" and d["source"] == "probe" and d["cuda_version"] == "12.4"
    (g,) = d["gpus"]
    assert g["mig"] is True and g["compute_capability"] == "8.0" and g["bf16"] is True
    assert g["memory_bytes"] == 40960 * MIB and g["memory_gib"] == 40.0 and g["free_gib"] == 39.06
    assert d["usable_memory_gib"] == 39.06 and d["cpu_cores"] >= 1


def test_cli_probe_cpu_reason(nvml, capsys):
    import autoft.cli as cli

    nvml([], init_error=NVMLError_LibraryNotFound("missing"))
    assert cli.main(["probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hardware: CPU only (no NVIDIA driver found") and " cores, " in out and " GiB RAM" in out
    assert cli.main(["probe", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "cpu" and d["gpus"] == [] and "driver" in d["reason"] and d["ram_gib"] > 0


def test_cli_probe_planned(capsys):
    import json

    import autoft.cli as cli

    assert cli.main(["probe", "--gpu", "rtx 4090", "--gpus", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["source"] == "table" and [g["name"] for g in d["gpus"]] == ["RTX-4090", "RTX-4090"]
    assert cli.main(["probe", "--gpu", "T4", "--gpu-memory", "12GiB"]) == 0
    out = capsys.readouterr().out
    assert "12.00 GiB total" in out and "memory given by hand" in out and "no, fp16" in out


def test_cli_probe_bad_gpu_exits_2(capsys):
    import autoft.cli as cli

    assert cli.main(["probe", "--gpu", "Voodoo5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoft: error: unknown GPU 'Voodoo5'") and "H100-80GB" in err
    assert cli.main(["probe", "--gpu-memory", "lots"]) == 2
    assert "cannot read the memory size" in capsys.readouterr().err
