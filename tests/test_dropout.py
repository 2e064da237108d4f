"""The fast CPU dropout: drop rate, scale, gradient, determinism, identity when off."""

from __future__ import annotations

import math

import pytest
import torch

from bfmscale.model.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_drop_rate_matches_p_in_every_lane(p):
    """Each of the four 16-bit lanes of a 64-bit draw drops at rate p (a biased lane, e.g. a constant sign bit,
    would show as one column far off)."""
    n = 1 << 20
    mask = ~keep_mask(torch.Size([n]), p, torch.Generator().manual_seed(1))
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.float().mean().item() - p) < 5 * sigma
    lanes = mask.view(-1, 4).float().mean(dim=0)
    assert torch.all((lanes - p).abs() < 5 * 2 * sigma), lanes


def test_mask_odd_shapes_and_extremes():
    mask = ~keep_mask(torch.Size([3, 5, 7]), 0.3)
    assert mask.shape == (3, 5, 7) and mask.dtype == torch.bool
    assert not (~keep_mask(torch.Size([4096]), 0.0)).any()
    assert (~keep_mask(torch.Size([4096]), 1.0 - 2**-17)).all()  # keep probability rounds to 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_elements_scaled_and_gradient_masked(dtype):
    x = (torch.rand(64, 48) + 0.5).to(dtype).requires_grad_()
    w = torch.randn(64, 48, dtype=dtype)
    torch.manual_seed(3)
    out = dropout(x, 0.25)
    kept = out != 0  # x > 0 everywhere, so zeros are exactly the dropped elements
    assert out.dtype == dtype
    assert 0.6 < kept.float().mean().item() < 0.9
    torch.testing.assert_close(out[kept], (x[kept] * (1 / 0.75)).detach(), rtol=0, atol=0)  # the exact scale
    (out * w).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(kept, w * (1 / 0.75), torch.zeros((), dtype=dtype)), rtol=0, atol=0)


def test_seeded_like_nn_dropout():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.3)
    torch.manual_seed(7)
    b = dropout(x, 0.3)
    c = dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_identity_when_off():
    x = torch.randn(10, 4)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
