"""The built-in models' fast max pooling is torch's, bit for bit: values, gradients and training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustbench_cl.models.builtin import digits_cnn_architecture
from robustbench_cl.models.layers import MaxPool2d, max_pool2d


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((7, 16, 8, 8), 2, None, 0),  # the digits CNN's pools
        ((3, 5, 17, 15), 3, 1, 1),  # DualTAP's dilation of the attention map
        ((2, 1, 12, 12), 5, 1, 2),  # one channel: NCHW and channels-last strides coincide
        ((3, 8, 9, 9), 2, None, 0),  # an odd size: the last row and column are dropped
    ],
)
@pytest.mark.parametrize("ties", [True, False], ids=["ties", "distinct"])
def test_values_and_gradients_equal_torch(shape, kernel, stride, padding, ties):
    generator = torch.Generator().manual_seed(0)
    if ties:  # three values only: most windows hold their maximum more than once
        x = torch.randint(0, 3, shape, generator=generator).float()
    else:
        x = torch.randn(shape, generator=generator)
    x.requires_grad_(True)
    expected = F.max_pool2d(x, kernel, stride, padding)
    got = max_pool2d(x, kernel, stride, padding)
    assert torch.equal(got, expected) and got.is_contiguous()
    upstream = torch.randn(expected.shape, generator=generator)
    (grad_expected,) = torch.autograd.grad(expected, x, upstream)
    (grad_got,) = torch.autograd.grad(got, x, upstream)
    assert torch.equal(grad_got, grad_expected)
    assert grad_got.is_contiguous()  # the layer before gets the memory format it had
    with torch.no_grad():
        assert torch.equal(max_pool2d(x, kernel, stride, padding), expected)


def test_a_training_step_is_bit_identical_to_torch_pooling():
    def step(pool: type[torch.nn.Module]) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = digits_cnn_architecture()
        for index, layer in enumerate(model):
            if isinstance(layer, torch.nn.MaxPool2d):
                model[index] = pool(2)
        x = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        y = torch.arange(32) % 10
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.state_dict()

    ours, torchs = step(MaxPool2d), step(torch.nn.MaxPool2d)
    assert all(torch.equal(ours[key], torchs[key]) for key in torchs)


def test_the_module_keeps_torch_settings_and_state():
    layer = MaxPool2d(2)
    assert isinstance(layer, torch.nn.MaxPool2d)
    assert repr(layer) == repr(torch.nn.MaxPool2d(2))
    assert layer.state_dict() == {}
    x = torch.randn(2, 3, 8, 8)
    values, indices = MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(values, F.max_pool2d(x, 2))
    assert indices.shape == values.shape
