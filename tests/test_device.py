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
