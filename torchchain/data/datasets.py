"""Datasets as whole tensors: two offline scikit-learn sets and three torchvision sets.

Every loader returns a :class:`TaskData` whose splits hold the *entire* dataset as tensors in
memory (float32 features, int64 class labels or float32 regression targets). Federated
simulation slices these tensors per client many times per round, which is far cheaper than
going through a ``Dataset``'s per-item ``__getitem__``; the largest set here (CIFAR-10, 60,000
images) takes about 740 MB as float32.

- :func:`load_digits` and :func:`load_diabetes` read data bundled with scikit-learn, so they work
  offline and are the defaults for tests and quick runs.
- :func:`load_mnist`, :func:`load_fashion_mnist` and :func:`load_cifar10` read torchvision's
  on-disk layout and download it only when asked to.

Image pixels are scaled to ``[0, 1]`` and nothing else: no mean/std normalisation and no
augmentation, so every client sees exactly the bytes on disk divided by 255 (or 16 for digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from torchchain.errors import ConfigError

__all__ = [
    "DataSplit",
    "TaskData",
    "load_cifar10",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
]


@dataclass(frozen=True, eq=False)
class DataSplit:
    """One split (train or test) of a dataset, held as two tensors.

    Attributes:
        features: float32 inputs, ``(N, C, H, W)`` for images, ``(N, D)`` for tabular data.
        targets: int64 class labels of shape ``(N,)`` for classification; float32 values of
            shape ``(N, 1)`` for regression.

    Raises:
        ValueError: If ``features`` and ``targets`` disagree on the number of samples.
    """

    features: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"features hold {self.features.shape[0]} samples but targets hold "
                f"{self.targets.shape[0]}; both must index the same samples"
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, indices: torch.Tensor) -> DataSplit:
        """Return the samples at ``indices`` (e.g. one client's partition), in that order."""
        return DataSplit(features=self.features[indices], targets=self.targets[indices])


@dataclass(frozen=True, eq=False)
class TaskData:
    """A dataset ready for training: both splits plus what a model needs to know about them.

    Attributes:
        name: Short name (``"digits"``, ``"mnist"``, ...).
        train: The training split; clients partition this one.
        test: The held-out split used for evaluation.
        task: ``"classification"`` or ``"regression"``.
        num_classes: Number of classes, or ``None`` for regression.
        input_shape: Shape of one sample, e.g. ``(1, 8, 8)`` or ``(10,)``.
        target_scale: For standardised regression targets, the training targets' standard
            deviation: an RMSE on the standardised targets times ``target_scale`` is the RMSE in
            the original units. ``1.0`` when targets are not rescaled.
        target_mean: For standardised regression targets, the training targets' mean, so that
            ``prediction * target_scale + target_mean`` is a prediction in the original units.
    """

    name: str
    train: DataSplit
    test: DataSplit
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    target_scale: float = 1.0
    target_mean: float = 0.0

    @property
    def num_outputs(self) -> int:
        """Width of a model's output layer: ``num_classes``, or the regression target width."""
        if self.num_classes is not None:
            return self.num_classes
        return int(self.train.targets.shape[1])


def _check_test_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction must lie strictly between 0 and 1; got {test_fraction}")


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images of the digits 0-9.

    The data ship with scikit-learn, so this loader never touches the network. Pixel values
    (integers 0..16) are divided by 16, giving float32 features of shape ``(N, 1, 8, 8)`` in
    ``[0, 1]``. The train/test split is stratified by label and fixed by ``seed``: the same seed
    always gives the same split.

    Args:
        test_fraction: Fraction of the samples held out for testing, in ``(0, 1)``.
        seed: Seed of the train/test split.

    Returns:
        A classification :class:`TaskData` named ``"digits"`` with 10 classes.

    Raises:
        ConfigError: If ``test_fraction`` is not in ``(0, 1)``.
    """
    _check_test_fraction(test_fraction)
    # Imported here: scikit-learn takes about a second to import and most runs use one source.
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = datasets.load_digits()
    features = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        features, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    return TaskData(
        name="digits",
        train=DataSplit(torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y, dtype=torch.int64)),
        test=DataSplit(torch.tensor(test_x, dtype=torch.float32), torch.tensor(test_y, dtype=torch.int64)),
        task="classification",
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def load_diabetes(*, test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's bundled diabetes data: 442 patients, 10 features, one progression score.

    Efron, Hastie, Johnstone and Tibshirani, 2004, "Least Angle Regression". The raw
    (unscaled) data are split by ``seed``, then features and targets are standardised to zero
    mean and unit variance with statistics of the **training** split only, so nothing about the
    test split leaks into training. Consequently the targets, and any RMSE computed on them,
    are in training-standard-deviation units; multiply by ``TaskData.target_scale`` for the
    original units (``target_mean`` restores predictions themselves).

    Args:
        test_fraction: Fraction of the samples held out for testing, in ``(0, 1)``.
        seed: Seed of the train/test split.

    Returns:
        A regression :class:`TaskData` named ``"diabetes"``: features ``(N, 10)``, targets
        ``(N, 1)``, both float32.

    Raises:
        ConfigError: If ``test_fraction`` is not in ``(0, 1)``.
    """
    _check_test_fraction(test_fraction)
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = datasets.load_diabetes(scaled=False)
    train_x, test_x, train_y, test_y = train_test_split(
        bunch.data, bunch.target.reshape(-1, 1), test_size=test_fraction, random_state=seed
    )
    # Population standard deviation (ddof=0), as scikit-learn's StandardScaler uses.
    x_mean, x_std = train_x.mean(axis=0), train_x.std(axis=0)
    y_mean, y_std = float(train_y.mean()), float(train_y.std())
    return TaskData(
        name="diabetes",
        train=DataSplit(_to_float32((train_x - x_mean) / x_std), _to_float32((train_y - y_mean) / y_std)),
        test=DataSplit(_to_float32((test_x - x_mean) / x_std), _to_float32((test_y - y_mean) / y_std)),
        task="regression",
        num_classes=None,
        input_shape=(bunch.data.shape[1],),
        target_scale=y_std,
        target_mean=y_mean,
    )


def _to_float32(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float32)


def load_mnist(*, root: str, download: bool = False) -> TaskData:
    """MNIST handwritten digits (LeCun et al., 1998), 60,000 train and 10,000 test 28x28 images.

    Read through ``torchvision.datasets.MNIST`` from ``<root>/MNIST/raw``. Features are float32
    ``(N, 1, 28, 28)`` in ``[0, 1]`` (pixel / 255); targets are int64 labels 0-9.

    Args:
        root: Folder that holds (or will hold) ``MNIST/raw``.
        download: Download the files into ``root`` when they are missing (needs internet).

    Raises:
        ConfigError: If the files are missing (or cannot be downloaded); the message says
            which setting to change.
    """
    from torchvision import datasets

    return _load_torchvision(datasets.MNIST, "mnist", "MNIST", "MNIST/raw", root=root, download=download)


def load_fashion_mnist(*, root: str, download: bool = False) -> TaskData:
    """Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 28x28 grey images of 10 clothing classes.

    Read through ``torchvision.datasets.FashionMNIST`` from ``<root>/FashionMNIST/raw``; same
    shapes and scaling as :func:`load_mnist`.

    Args:
        root: Folder that holds (or will hold) ``FashionMNIST/raw``.
        download: Download the files into ``root`` when they are missing (needs internet).

    Raises:
        ConfigError: If the files are missing (or cannot be downloaded).
    """
    from torchvision import datasets

    return _load_torchvision(
        datasets.FashionMNIST, "fashion_mnist", "Fashion-MNIST", "FashionMNIST/raw", root=root, download=download
    )


def load_cifar10(*, root: str, download: bool = False) -> TaskData:
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train and 10,000 test 32x32 colour images, 10 classes.

    Read through ``torchvision.datasets.CIFAR10`` from ``<root>/cifar-10-batches-py`` (torchvision
    checks each file's MD5). Features are float32 ``(N, 3, 32, 32)`` (channels first) in
    ``[0, 1]``; targets are int64 labels 0-9.

    Args:
        root: Folder that holds (or will hold) ``cifar-10-batches-py``.
        download: Download the archive into ``root`` when it is missing (needs internet).

    Raises:
        ConfigError: If the files are missing or corrupted (or cannot be downloaded).
    """
    from torchvision import datasets

    return _load_torchvision(
        datasets.CIFAR10, "cifar10", "CIFAR-10", "cifar-10-batches-py", root=root, download=download
    )


def _load_torchvision(
    dataset_cls: type, name: str, display_name: str, folder: str, *, root: str, download: bool
) -> TaskData:
    splits = []
    for train in (True, False):
        try:
            dataset = dataset_cls(root=root, train=train, download=download)
        except RuntimeError as error:
            # torchvision signals both "files missing" and "download failed" with RuntimeError.
            if download:
                raise ConfigError(
                    f"{display_name} could not be downloaded into {root}: {error}; check the internet "
                    f"connection or set dataset.root=<folder with {folder}> and dataset.download=false"
                ) from error
            raise ConfigError(
                f"{display_name} not found under {root}: set dataset.download=true (needs internet) "
                f"or dataset.root=<folder with {folder}>"
            ) from error
        splits.append(_images_to_split(dataset.data, dataset.targets))
    train_split, test_split = splits
    return TaskData(
        name=name,
        train=train_split,
        test=test_split,
        task="classification",
        num_classes=len(dataset.classes),
        input_shape=tuple(train_split.features.shape[1:]),
    )


def _images_to_split(data: torch.Tensor | np.ndarray, targets: torch.Tensor | list[int]) -> DataSplit:
    """Turn torchvision's uint8 images and labels into a float32 ``(N, C, H, W)`` split."""
    images = torch.as_tensor(data)
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images from torchvision, got {images.dtype}")
    if images.ndim == 3:  # MNIST-style (N, H, W): add the channel axis
        images = images.unsqueeze(1)
    else:  # CIFAR-style (N, H, W, C): channels first, as convolutions expect
        images = images.permute(0, 3, 1, 2)
    features = images.to(torch.float32).div_(255.0).contiguous()
    return DataSplit(features=features, targets=torch.as_tensor(targets, dtype=torch.int64))
