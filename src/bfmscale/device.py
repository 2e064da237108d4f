"""Device and precision: detected, not assumed."""

from __future__ import annotations

import functools

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


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32). auto: bf16 on a bf16-capable GPU or a CPU with native bf16."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    return torch.bfloat16 if native else None
