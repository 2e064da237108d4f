"""The fused chunked linear cross-entropy equals F.cross_entropy in value and gradients, and in counted FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bfmscale.train.fused_ce import fused_linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("need_e", [True, False])
def test_matches_reference(chunk, need_e):
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    e = torch.randn(33, 16, requires_grad=need_e)
    y = torch.randint(0, 33, (50,))
    ref = F.cross_entropy(h @ e.T, y)
    ref.backward()
    gh, ge = h.grad.clone(), e.grad.clone() if need_e else None
    h.grad = None
    if need_e:
        e.grad = None
    out = fused_linear_cross_entropy(h, e, y, chunk=chunk)
    (2.0 * out).backward()  # a non-unit upstream gradient is applied
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, 2 * gh, rtol=1e-4, atol=1e-6)
    if need_e:
        torch.testing.assert_close(e.grad, 2 * ge, rtol=1e-4, atol=1e-6)
    else:
        assert e.grad is None


@pytest.mark.parametrize("need_e,factor", [(True, 3), (False, 2)])
def test_flops_equal_plain_autograd(need_e, factor):
    h = torch.randn(40, 8, requires_grad=True)
    e = torch.randn(20, 8, requires_grad=need_e)
    y = torch.randint(0, 20, (40,))
    with FlopCounterMode(display=False) as fc:
        fused_linear_cross_entropy(h, e, y, chunk=16).backward()
    assert fc.get_total_flops() == factor * 2 * 40 * 20 * 8


def test_bf16_inputs_give_close_loss():
    torch.manual_seed(1)
    h = torch.randn(64, 32)
    e = torch.randn(100, 32)
    y = torch.randint(0, 100, (64,))
    ref = F.cross_entropy(h @ e.T, y)
    out = fused_linear_cross_entropy(h.bfloat16().requires_grad_(), e.bfloat16().requires_grad_(), y)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 0.05 * ref.item()
