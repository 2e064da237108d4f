"""The fused chunked cross-entropies equal the plain ones in value and gradients, and in counted FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bfmscale.train.fused_ce import fused_linear_cross_entropy, fused_sampled_cross_entropy
from bfmscale.train.negatives import (NegativeSampler, frozen_sampled_softmax_loss, sampled_logits,
                                      sampled_softmax_loss)


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


def test_under_autocast_matches_plain_autocast():
    """fp32 leaves under bf16 autocast (the training setting): same loss and gradients as plain autograd under the
    same autocast, gradients returned in the leaves' fp32."""
    torch.manual_seed(2)
    h = torch.randn(96, 32, requires_grad=True)
    e = torch.randn(200, 32, requires_grad=True)
    y = torch.randint(0, 200, (96,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ e.T).float(), y)
    ref.backward()
    gh, ge = h.grad.clone(), e.grad.clone()
    h.grad = e.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_linear_cross_entropy(h, e, y, chunk=40)
    out.backward()
    assert h.grad.dtype == e.grad.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h.grad, gh, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(e.grad, ge, rtol=0.05, atol=2e-4)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize("logq", [True, False])
def test_frozen_sampled_matches_reference(chunk, logq):
    """Fused sampled CE over a frozen cache: same loss and dh as the plain path, accidental hits still masked."""
    torch.manual_seed(0)
    cache = torch.randn(13, 8)  # codes 0..12, row 0 = padding
    h = torch.randn(30, 8, requires_grad=True)
    pos = torch.randint(1, 13, (30,))
    sampler = NegativeSampler("popularity", 12, torch.arange(13.0))
    neg = sampler.sample(30, 6, torch.Generator().manual_seed(1))
    neg[0, 0] = pos[0]  # an accidental hit
    log_q = sampler.log_q(neg) if logq else None
    ref = sampled_softmax_loss(h, cache[pos], cache[neg], pos, neg, log_q, temperature=0.5)
    ref.backward()
    gh = h.grad.clone()
    h.grad = None
    out = fused_sampled_cross_entropy(h / 0.5, cache, pos, neg, log_q, sampled_logits, chunk=chunk)
    (3.0 * out).backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, 3 * gh, rtol=1e-4, atol=1e-6)
    h.grad = None
    frozen_sampled_softmax_loss(h, cache, pos, neg, log_q, temperature=0.5).backward()
    torch.testing.assert_close(h.grad, gh, rtol=1e-4, atol=1e-6)
