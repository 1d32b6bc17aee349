"""LeNet-5: the paper's layer sizes on MNIST, padding of small images, and what it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchchain.errors import ConfigError
from torchchain.models import LeNet5


def test_mnist_layout_is_the_papers_with_61706_parameters() -> None:
    model = LeNet5(input_shape=(1, 28, 28), num_outputs=10)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes == {
        "features.1.weight": (6, 1, 5, 5),
        "features.1.bias": (6,),
        "features.4.weight": (16, 6, 5, 5),
        "features.4.bias": (16,),
        "classifier.1.weight": (120, 16 * 5 * 5),
        "classifier.1.bias": (120,),
        "classifier.3.weight": (84, 120),
        "classifier.3.bias": (84,),
        "classifier.5.weight": (10, 84),
        "classifier.5.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 61_706
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_padding_28x28_to_32x32_is_a_first_convolution_with_padding_2() -> None:
    torch.manual_seed(0)
    model = LeNet5(input_shape=(1, 28, 28), num_outputs=10)
    x = torch.rand(2, 1, 28, 28)
    conv = model.features[1]
    expected = nn.functional.conv2d(x, conv.weight, conv.bias, padding=2)
    assert torch.allclose(model.features[:2](x), expected, atol=1e-6)


@pytest.mark.parametrize(("shape", "flat"), [((1, 8, 8), 400), ((1, 13, 9), 400), ((3, 32, 32), 400), ((3, 40, 36), 16 * 7 * 6)])
def test_small_images_are_padded_to_32_and_large_ones_widen_the_first_dense_layer(
    shape: tuple[int, int, int], flat: int
) -> None:
    model = LeNet5(input_shape=shape, num_outputs=7)
    assert model.classifier[1].in_features == flat
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_state_is_trainable_parameters_only() -> None:
    model = LeNet5(input_shape=(1, 28, 28), num_outputs=10)
    assert list(model.state_dict()) == [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (64,), "num_outputs": 10}, "model=lenet needs image samples"),
        ({"input_shape": (1, 0, 28), "num_outputs": 10}, "model=lenet needs image samples"),
        ({"input_shape": (1, 28, 28), "num_outputs": 0}, "num_outputs must be >= 1"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LeNet5(**kwargs)
