"""Device and precision: detected, not assumed."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from bfmscale.errors import BfmError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BfmError("train.device is 'cuda' but no CUDA device is available; expected auto or cpu")
    return torch.device(name)


def cpu_capabilities() -> dict:
    """torch's CPU feature flags ({} on builds without `torch.cpu.get_capabilities`)."""
    return torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (elsewhere bf16 is emulated and ~20x slower than fp32)."""
    caps = cpu_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


@functools.cache
def cpu_has_amx() -> bool:
    """True when the CPU has AMX-BF16 tiles (kernel choices measured differently there, see `causal_attention`)."""
    return bool(cpu_capabilities().get("amx_bf16"))


@functools.cache
def cpu_is_amd() -> bool:
    """True on an AMD CPU, by the name torch's cpuinfo gives it (MKL's fp32 GEMM measured differently there, see
    `table_scores`)."""
    return str(cpu_capabilities().get("cpu_name", "")).upper().startswith("AMD")


# torch's CPU flags for the instruction sets that decide the matmul kernels, as vendors name them
ISA_FLAGS = (("avx2", "AVX2"), ("avx512_f", "AVX512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))
SYSFS_CPU0_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def cache_bytes(level: int, root: Path | None = None) -> int | None:
    """Size of cpu0's level-`level` data or unified cache from Linux sysfs (or `root`); None where it does not say."""
    for index in sorted((root or SYSFS_CPU0_CACHE).glob("index*")):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def describe_machine(device: torch.device) -> str:
    """One line naming what a timing ran on: the GPU, or the CPU with its matmul ISA, cores and caches; torch."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"cuda: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    caps = cpu_capabilities()
    isa = [label for flag, label in ISA_FLAGS if caps.get(flag)]
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    parts = [f"{caps['num_physical_cores']} cores"] if caps.get("num_physical_cores") else []
    l2 = caps.get("l2_cache_size") or cache_bytes(2)
    l3 = cache_bytes(3)
    parts += ([f"L2 {_mib(l2)}/core"] if l2 else []) + ([f"L3 {_mib(l3)}"] if l3 else [])
    name = caps.get("cpu_name") or platform.processor() or platform.machine()
    return (f"cpu: {name} ({', '.join(isa) or 'no AVX2'}: {bf16}; {', '.join(parts) or 'cores and caches unknown'}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32). auto: bf16 on a bf16-capable GPU or a CPU with native bf16."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    return torch.bfloat16 if native else None
