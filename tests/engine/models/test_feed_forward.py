"""The flows' MLP (engine/models/attention.py FeedForwardNet): on CUDA in inference its first layer's bias and
GELU(tanh) run as the epilogue of the matrix product; the result must be the module's own."""
from __future__ import annotations

import pytest
import torch

from engine.models import attention
from engine.models.attention import FeedForwardNet


def _net_and_input(device: str, dtype: torch.dtype) -> tuple[FeedForwardNet, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    net = FeedForwardNet(64)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.2
    x = torch.randn(3, 50, 64, generator=g)
    return net.to(device, dtype), x.to(device, dtype)


def test_the_cpu_path_is_the_modules_own():
    net, x = _net_and_input("cpu", torch.float32)
    with torch.no_grad():
        expected = net.mlp[2](torch.nn.functional.gelu(net.mlp[0](x), approximate="tanh"))
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cuda_epilogue_matches_the_module(monkeypatch, dtype):
    net, x = _net_and_input("cuda", dtype)
    with torch.no_grad():
        fused = net(x)
        monkeypatch.setattr(attention, "GELU_EPILOGUE", False)
        plain = net(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fused, plain, rtol=tol, atol=tol)
