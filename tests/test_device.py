"""Precision `auto` follows the CPU's bf16 capability (detected, not assumed); device errors name the field."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from bfmscale import device as dev
from bfmscale.errors import BfmError


@pytest.mark.parametrize("caps,native", [({"avx2": True}, False), ({"avx2": True, "avx512_bf16": True}, True),
                                         ({"amx_bf16": True}, True), ({}, False)])
def test_native_bf16_detected_from_cpu_capabilities(caps, native):
    with mock.patch.object(torch.cpu, "get_capabilities", return_value=caps, create=True):
        assert dev.cpu_has_native_bf16() is native


@pytest.mark.parametrize("trait,caps,expected", [
    ("cpu_has_amx", {"avx512_bf16": True}, False), ("cpu_has_amx", {"avx512_bf16": True, "amx_bf16": True}, True),
    ("cpu_has_amx", {}, False), ("cpu_is_amd", {"cpu_name": "AMD EPYC 9B14"}, True),
    ("cpu_is_amd", {"cpu_name": "Intel Xeon"}, False), ("cpu_is_amd", {}, False)])
def test_cpu_kind_detected_from_torch_and_cached(trait, caps, expected):
    """AMX (which picks the CPU attention rule) is read from torch's flags, an AMD CPU (which picks the fp32
    table-score rule) from the name torch gives it; each answer is cached per process."""
    detect = getattr(dev, trait)
    detect.cache_clear()
    try:
        with mock.patch.object(torch.cpu, "get_capabilities", return_value=caps, create=True):
            assert detect() is expected
        assert detect() is expected  # cached: torch is no longer asked
    finally:
        detect.cache_clear()


@pytest.mark.parametrize("native,expected", [(False, None), (True, torch.bfloat16)])
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(native, expected):
    cpu = torch.device("cpu")
    with mock.patch.object(dev, "cpu_has_native_bf16", return_value=native):
        assert dev.resolve_precision("auto", cpu) is expected
        assert dev.resolve_precision("fp32", cpu) is None
        assert dev.resolve_precision("bf16", cpu) is torch.bfloat16  # asked for explicitly: honoured


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_an_error_naming_the_field():
    with pytest.raises(BfmError, match="train.device"):
        dev.resolve_device("cuda")


def _fake_cache(root, *levels: tuple[str, str, str]) -> None:
    """A sysfs-like cpu0/cache folder: one index per (level, type, size)."""
    for i, (level, kind, size) in enumerate(levels):
        (root / f"index{i}").mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (root / f"index{i}" / name).write_text(text + "\n")


def test_cache_sizes_read_from_sysfs_skip_the_instruction_cache(tmp_path):
    _fake_cache(tmp_path, ("1", "Instruction", "64K"), ("1", "Data", "48K"), ("2", "Unified", "2048K"),
                ("3", "Unified", "491520K"))
    assert dev.cache_bytes(1, tmp_path) == 48 * 2**10
    assert dev.cache_bytes(2, tmp_path) == 2 * 2**20
    assert dev.cache_bytes(3, tmp_path) == 480 * 2**20
    assert dev.cache_bytes(4, tmp_path) is None
    assert dev.cache_bytes(2, tmp_path / "missing") is None


@pytest.mark.parametrize("caps,isa,bf16", [
    ({"cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True,
      "num_physical_cores": 2, "l2_cache_size": 2 * 2**20}, "AVX2, AVX512, AVX512-BF16, AMX-BF16", "native bf16"),
    ({"cpu_name": "AMD EPYC 7B13", "avx2": True, "num_physical_cores": 2}, "AVX2", "no native bf16"),
    ({}, "no AVX2", "no native bf16")])
def test_machine_description_names_the_cpu_its_matmul_isa_and_bf16(caps, isa, bf16, tmp_path):
    """A bench log and a run's record say what the timing ran on: name, ISA tier, bf16 support, cores, caches."""
    _fake_cache(tmp_path, ("3", "Unified", "32M"))
    with mock.patch.object(torch.cpu, "get_capabilities", return_value=caps, create=True), \
            mock.patch.object(dev, "SYSFS_CPU0_CACHE", tmp_path):
        line = dev.describe_machine(torch.device("cpu"))
    assert line.startswith(f"cpu: {caps.get('cpu_name', '')}")
    assert f"({isa}: {bf16};" in line
    assert ("2 cores" in line) == bool(caps) and ("L2 2 MiB/core" in line) == ("l2_cache_size" in caps)
    assert "L3 32 MiB" in line and f"torch {torch.__version__}" in line


def test_machine_description_of_a_gpu_names_it_with_its_capability_and_memory():
    props = mock.Mock(major=9, minor=0, total_memory=139 * 2**30)
    props.name = "NVIDIA H200"
    with mock.patch.object(torch.cuda, "get_device_properties", return_value=props):
        line = dev.describe_machine(torch.device("cuda"))
    assert line.startswith("cuda: NVIDIA H200 (sm_90, 139 GiB), torch ")
