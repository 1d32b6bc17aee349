"""The offline scikit-learn loaders: digits (classification) and diabetes (regression)."""

from __future__ import annotations

import pytest
import torch

from torchchain.data.datasets import DataSplit, TaskData, load_diabetes, load_digits
from torchchain.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load_digits()


@pytest.fixture(scope="module")
def diabetes() -> TaskData:
    return load_diabetes()


def test_digits_shapes_dtypes_and_metadata(digits: TaskData) -> None:
    assert digits.name == "digits"
    assert digits.task == "classification"
    assert digits.num_classes == 10 and digits.num_outputs == 10
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == 360  # ceil(0.2 * 1797), scikit-learn's rounding
    for split in (digits.train, digits.test):
        assert split.features.dtype == torch.float32
        assert split.features.shape[1:] == (1, 8, 8)
        assert split.targets.dtype == torch.int64
        assert split.targets.shape == (len(split),)
        assert set(split.targets.tolist()) == set(range(10))


def test_digits_pixels_are_scaled_to_unit_interval(digits: TaskData) -> None:
    features = torch.cat([digits.train.features, digits.test.features])
    assert features.min() == 0.0 and features.max() == 1.0
    # Raw pixels are integers 0..16, so scaled ones are multiples of 1/16.
    assert torch.equal(features * 16, (features * 16).round())


def test_digits_split_is_stratified(digits: TaskData) -> None:
    train_counts = torch.bincount(digits.train.targets, minlength=10)
    test_counts = torch.bincount(digits.test.targets, minlength=10)
    expected = (train_counts + test_counts).double() * 0.2
    assert torch.all((test_counts.double() - expected).abs() <= 1.0)


def test_digits_split_is_deterministic_per_seed(digits: TaskData) -> None:
    again = load_digits(seed=0)
    other = load_digits(seed=1)
    assert torch.equal(again.train.features, digits.train.features)
    assert torch.equal(again.test.targets, digits.test.targets)
    assert not torch.equal(other.train.features, digits.train.features)


def test_digits_test_fraction_is_honoured() -> None:
    data = load_digits(test_fraction=0.5)
    assert abs(len(data.test) - 1797 / 2) <= 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction_names_the_key(fraction: float) -> None:
    with pytest.raises(ConfigError, match="dataset.test_fraction"):
        load_digits(test_fraction=fraction)
    with pytest.raises(ConfigError, match="dataset.test_fraction"):
        load_diabetes(test_fraction=fraction)


def test_diabetes_shapes_and_metadata(diabetes: TaskData) -> None:
    assert diabetes.name == "diabetes"
    assert diabetes.task == "regression"
    assert diabetes.num_classes is None
    assert diabetes.num_outputs == 1
    assert diabetes.input_shape == (10,)
    assert len(diabetes.train) + len(diabetes.test) == 442
    for split in (diabetes.train, diabetes.test):
        assert split.features.dtype == torch.float32 and split.features.shape[1:] == (10,)
        assert split.targets.dtype == torch.float32 and split.targets.shape == (len(split), 1)


def test_diabetes_is_standardised_with_train_statistics_only(diabetes: TaskData) -> None:
    train_x, test_x = diabetes.train.features.double(), diabetes.test.features.double()
    train_y, test_y = diabetes.train.targets.double(), diabetes.test.targets.double()
    # Train split: zero mean, unit population standard deviation, per feature and for targets.
    assert torch.allclose(train_x.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(train_x.std(0, unbiased=False), torch.ones(10, dtype=torch.float64), atol=1e-5)
    assert abs(train_y.mean().item()) < 1e-5 and abs(train_y.std(unbiased=False).item() - 1) < 1e-5
    # Test split standardised with its own statistics would have exactly zero mean too.
    assert test_x.mean(0).abs().max() > 0.01
    assert abs(test_y.mean().item()) > 0.01


def test_diabetes_targets_map_back_to_original_units(diabetes: TaskData) -> None:
    # The raw disease-progression scores are integers between 25 and 346.
    original = torch.cat([diabetes.train.targets, diabetes.test.targets]).double()
    original = original * diabetes.target_scale + diabetes.target_mean
    assert torch.allclose(original, original.round(), atol=1e-3)
    assert original.min().round() == 25 and original.max().round() == 346
    assert 60 < diabetes.target_scale < 90  # the scores' standard deviation is about 77


def test_diabetes_split_is_deterministic_per_seed(diabetes: TaskData) -> None:
    assert torch.equal(load_diabetes(seed=0).test.targets, diabetes.test.targets)
    assert not torch.equal(load_diabetes(seed=3).test.targets, diabetes.test.targets)


def test_split_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 samples but targets hold 2"):
        DataSplit(features=torch.zeros(3, 2), targets=torch.zeros(2, dtype=torch.int64))


def test_split_subset_keeps_features_and_targets_aligned() -> None:
    split = DataSplit(features=torch.arange(10.0).view(5, 2), targets=torch.tensor([0, 1, 2, 3, 4]))
    part = split.subset(torch.tensor([4, 1]))
    assert torch.equal(part.features, torch.tensor([[8.0, 9.0], [2.0, 3.0]]))
    assert torch.equal(part.targets, torch.tensor([4, 1]))
    assert len(part) == 2


def test_num_outputs_of_regression_is_the_target_width() -> None:
    split = DataSplit(features=torch.zeros(4, 3), targets=torch.zeros(4, 2))
    data = TaskData(name="toy", train=split, test=split, task="regression", num_classes=None, input_shape=(3,))
    assert data.num_outputs == 2
    assert data.target_scale == 1.0 and data.target_mean == 0.0
