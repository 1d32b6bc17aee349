"""Models: shapes for every dataset layout, parameter layout, and that they can learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchchain.models as models
from torchchain.data.datasets import load_digits
from torchchain.errors import ConfigError
from torchchain.models import CNN, MLP, LeNet5, LinearRegression

from composing import config_classes

MODELS = config_classes("model")

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
ALL_SHAPES = [(10,), *IMAGE_SHAPES]


def test_registry_and_exports() -> None:
    assert MODELS == {"cnn": CNN, "lenet": LeNet5, "linear": LinearRegression, "mlp": MLP}  # conf/model/*.yaml
    assert models.__all__ == sorted(models.__all__)


@pytest.mark.parametrize("shape", ALL_SHAPES)
@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_flat_models_accept_every_input_shape(name: str, shape: tuple[int, ...]) -> None:
    model = MODELS[name](input_shape=shape, num_outputs=7)
    assert model(torch.rand(5, *shape)).shape == (5, 7)


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_cnn_accepts_every_image_shape(shape: tuple[int, ...]) -> None:
    model = CNN(input_shape=shape, num_outputs=10)
    assert model(torch.rand(4, *shape)).shape == (4, 10)


@pytest.mark.parametrize("kernel_size", [1, 2, 5])
def test_cnn_flattened_size_is_right_for_other_kernels(kernel_size: int) -> None:
    model = CNN(input_shape=(1, 28, 28), num_outputs=3, channels=(4, 8, 8), kernel_size=kernel_size)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_cnn_defaults_on_mnist_are_conv32_conv64_fc128() -> None:
    model = CNN(input_shape=(1, 28, 28), num_outputs=10)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes == {
        "features.0.weight": (32, 1, 3, 3),
        "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3),
        "features.3.bias": (64,),
        "classifier.1.weight": (128, 64 * 7 * 7),
        "classifier.1.bias": (128,),
        "classifier.3.weight": (10, 128),
        "classifier.3.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 320 + 18_496 + 401_536 + 1_290


def test_linear_regression_is_one_affine_map() -> None:
    model = LinearRegression(input_shape=(2, 2))
    assert [name for name, _ in model.named_parameters()] == ["linear.weight", "linear.bias"]
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        model.linear.bias.fill_(0.5)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.equal(model(x), torch.tensor([[5.5]]))


def test_mlp_hidden_widths_and_activation() -> None:
    model = MLP(input_shape=(6,), num_outputs=2, hidden=(5, 4), activation="tanh")
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(6, 5), (5, 4), (4, 2)]
    assert sum(isinstance(module, nn.Tanh) for module in model.modules()) == 2
    no_hidden = MLP(input_shape=(6,), num_outputs=2, hidden=())
    assert len([m for m in no_hidden.modules() if isinstance(m, nn.Linear)]) == 1


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("linear", (10,), {}), ("mlp", (1, 8, 8), {"hidden": (16, 8)}), ("cnn", (3, 32, 32), {"channels": (4,)}),
        ("lenet", (1, 28, 28), {}),
    ],
)
def test_state_is_float_parameters_only(name: str, shape: tuple[int, ...], options: dict) -> None:
    model = MODELS[name](input_shape=shape, num_outputs=3, **options)
    state = model.state_dict()
    assert state and all(tensor.dtype == torch.float32 for tensor in state.values())
    # No buffers (such as BatchNorm running statistics): the whole state is trainable.
    assert list(state) == [name for name, _ in model.named_parameters()]
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def test_same_seed_builds_the_same_model() -> None:
    torch.manual_seed(0)
    first = CNN(input_shape=(1, 8, 8), num_outputs=10).state_dict()
    torch.manual_seed(0)
    second = CNN(input_shape=(1, 8, 8), num_outputs=10).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_mlp_learns_digits_with_a_few_sgd_steps() -> None:
    torch.manual_seed(0)
    data = load_digits()
    model = MLP(input_shape=data.input_shape, num_outputs=data.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    features, targets = data.train.features[:512], data.train.targets[:512]

    def loss() -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(model(features), targets).item()

    before = loss()
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(features), targets).backward()
        optimizer.step()
    after = loss()
    assert before > 2.0  # about log(10) for an untrained classifier
    assert after < 0.5 * before


def test_cnn_rejects_tabular_input() -> None:
    with pytest.raises(ConfigError, match="model=cnn needs image samples"):
        CNN(input_shape=(10,), num_outputs=1)


def test_cnn_rejects_images_too_small_for_its_pooling_blocks() -> None:
    with pytest.raises(ConfigError, match="too small for 4 pooling blocks"):
        CNN(input_shape=(1, 8, 8), num_outputs=10, channels=(8, 8, 8, 8))


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (MLP, {"input_shape": (4,), "num_outputs": 2, "activation": "sigmoid"}, "model.activation must be one of"),
        (MLP, {"input_shape": (4,), "num_outputs": 2, "hidden": (8, 0)}, "model.hidden"),
        (MLP, {"input_shape": (4,), "num_outputs": 0}, "num_outputs must be >= 1"),
        (LinearRegression, {"input_shape": (0,)}, "input_shape"),
        (LinearRegression, {"input_shape": ()}, "input_shape"),
        (CNN, {"input_shape": (1, 8, 8), "num_outputs": 2, "channels": ()}, "model.channels"),
        (CNN, {"input_shape": (1, 8, 8), "num_outputs": 2, "hidden": 0}, "model.hidden"),
        (CNN, {"input_shape": (1, 8, 8), "num_outputs": 2, "kernel_size": 0}, "model.kernel_size"),
    ],
)
def test_bad_options_are_config_errors(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)
