"""Layers of the built-in models that compute what torch's do, bit for bit, only faster on CPU.

torch's CPU max pooling of a contiguous (NCHW) tensor runs a slow generic kernel: on a
(57, 32, 8, 8) batch it takes 0.72 ms, 13 times its channels-last kernel (0.054 ms) and 36 times
an add of the same tensor (measured with one thread, torch 2.14.1). In the built-in CNNs that made
pooling the largest cost of a forward pass (more than the convolutions), and Square's 5,000
queries are 5,000 forward passes. A maximum is exact, so pooling in channels-last gives the same
values; the backward pass routes each gradient to the same first maximum of its window, so the
gradients are the same too (tests/test_layers.py checks both, ties included). The result and the
input's gradient are handed back contiguous, so the layers around it run the kernels they ran
before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_CHANNELS_LAST = torch.channels_last


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        fast = x.contiguous(memory_format=_CHANNELS_LAST)
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            fast, kernel, stride, padding, dilation, ceil_mode
        )
        ctx.save_for_backward(fast, indices)
        ctx.settings = (kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        fast, indices = ctx.saved_tensors
        grad_input = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=_CHANNELS_LAST), fast, *ctx.settings, indices
        )
        return grad_input.contiguous(), None, None, None, None, None


def max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``F.max_pool2d``, computed in channels-last on CPU; the same values and gradients."""
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or not x.is_contiguous()
        or torch._C._are_functorch_transforms_active()  # vmap/grad (DP-SGD's per-sample grads)
    ):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    kernel = _pair(kernel_size)
    settings = (kernel, _pair(stride) if stride else kernel, _pair(padding), _pair(dilation))
    if not (torch.is_grad_enabled() and x.requires_grad):
        fast = x.contiguous(memory_format=_CHANNELS_LAST)
        return F.max_pool2d(fast, *settings, ceil_mode).contiguous()
    return _ChannelsLastMaxPool.apply(x, *settings, ceil_mode)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same settings, no state) that pools through :func:`max_pool2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices:
            return super().forward(x)
        return max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
