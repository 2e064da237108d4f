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


@pytest.mark.parametrize("caps,amx", [({"avx512_bf16": True}, False), ({"avx512_bf16": True, "amx_bf16": True}, True),
                                      ({}, False)])
def test_amx_detected_from_cpu_capabilities(caps, amx):
    """AMX (which picks the CPU attention rule) is read from torch's flags; the answer is cached per process."""
    dev.cpu_has_amx.cache_clear()
    try:
        with mock.patch.object(torch.cpu, "get_capabilities", return_value=caps, create=True):
            assert dev.cpu_has_amx() is amx
    finally:
        dev.cpu_has_amx.cache_clear()


@pytest.mark.parametrize("caps,amd", [({"cpu_name": "AMD EPYC 9B14"}, True), ({"cpu_name": "Intel Xeon"}, False),
                                      ({}, False)])
def test_amd_detected_from_the_cpu_name(caps, amd):
    """An AMD CPU (which picks the fp32 table-score rule) is known by the name torch gives it; cached per process."""
    dev.cpu_is_amd.cache_clear()
    try:
        with mock.patch.object(torch.cpu, "get_capabilities", return_value=caps, create=True):
            assert dev.cpu_is_amd() is amd
    finally:
        dev.cpu_is_amd.cache_clear()


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
