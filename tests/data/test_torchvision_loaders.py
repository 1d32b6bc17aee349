"""The torchvision loaders, on tiny files written in each dataset's own on-disk format."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from torchchain.data.datasets import load_cifar10, load_fashion_mnist, load_mnist
from torchchain.errors import ConfigError


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file: magic 0x0000 08 <ndim>, big-endian int32 sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_layout(raw: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 8, 5], dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


@pytest.mark.parametrize(
    ("loader", "folder", "name"),
    [(load_mnist, "MNIST", "mnist"), (load_fashion_mnist, "FashionMNIST", "fashion_mnist")],
)
def test_mnist_style_loader_reads_idx_files(tmp_path: Path, loader, folder: str, name: str) -> None:
    arrays = write_mnist_layout(tmp_path / folder / "raw", np.random.default_rng(0))
    data = loader(root=str(tmp_path))

    assert data.name == name
    assert data.task == "classification" and data.num_classes == 10 and data.num_outputs == 10
    assert data.input_shape == (1, 28, 28)
    assert data.train.features.dtype == torch.float32 and data.train.features.shape == (6, 1, 28, 28)
    assert data.test.features.shape == (3, 1, 28, 28)
    expected_train = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    expected_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.equal(data.train.features, expected_train)
    assert torch.equal(data.test.features, expected_test)
    assert data.train.targets.dtype == torch.int64
    assert data.train.targets.tolist() == [0, 1, 2, 3, 4, 9]
    assert data.test.targets.tolist() == [7, 8, 5]


@pytest.mark.parametrize(("loader", "folder"), [(load_mnist, "MNIST/raw"), (load_fashion_mnist, "FashionMNIST/raw")])
def test_missing_mnist_files_ask_for_download_or_root(tmp_path: Path, loader, folder: str) -> None:
    with pytest.raises(ConfigError) as info:
        loader(root=str(tmp_path), download=False)
    message = str(info.value)
    assert f"not found under {tmp_path}" in message
    assert "dataset.download=true" in message
    assert f"dataset.root=<folder with {folder}>" in message


def test_partial_mnist_files_are_reported_missing(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path / "MNIST" / "raw", np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="MNIST not found"):
        load_mnist(root=str(tmp_path))


def write_cifar_layout(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Write CIFAR-10's six batch files and its meta file, and point torchvision at their MD5s.

    torchvision verifies every CIFAR-10 file against the MD5 of the real release, so the test
    replaces the expected checksums with those of its own files: the integrity check still runs.
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for index, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]):
        batches[name] = {"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), "labels": [index, 9 - index]}
    batches["test_batch"] = {"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8), "labels": [3, 1, 4]}
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    for name, content in [*batches.items(), ("batches.meta", meta)]:
        with open(folder / name, "wb") as file:
            pickle.dump(content, file)  # deliberate: test fixture in CIFAR-10's own file format

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[name, md5(name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5(name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5("batches.meta")})
    return batches


def test_cifar10_loader_returns_channels_first_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = write_cifar_layout(tmp_path / "cifar-10-batches-py", monkeypatch)
    data = load_cifar10(root=str(tmp_path))

    assert data.name == "cifar10"
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.train.features.dtype == torch.float32 and data.train.features.shape == (10, 3, 32, 32)
    assert data.test.features.shape == (3, 3, 32, 32)
    assert data.train.targets.dtype == torch.int64
    assert data.train.targets.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert data.test.targets.tolist() == [3, 1, 4]
    # A CIFAR-10 row stores the red plane, then green, then blue, each row-major 32x32.
    row = batches["data_batch_2"]["data"][1]
    image = data.train.features[3]
    for channel, height, width in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert image[channel, height, width] == row[channel * 1024 + height * 32 + width] / 255
    expected_test = torch.from_numpy(batches["test_batch"]["data"]).float().view(3, 3, 32, 32) / 255
    assert torch.equal(data.test.features, expected_test)


def test_corrupted_cifar10_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_layout(folder, monkeypatch)
    with open(folder / "data_batch_3", "ab") as file:
        file.write(b"\x00")
    with pytest.raises(ConfigError, match="CIFAR-10 not found under"):
        load_cifar10(root=str(tmp_path))


def test_missing_cifar10_asks_for_download_or_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.root=<folder with cifar-10-batches-py>"):
        load_cifar10(root=str(tmp_path))
