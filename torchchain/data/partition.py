"""Split a training set among federated clients.

Every function here is pure: given the same arguments (``seed`` included) it returns the same
partition, drawing from its own local random generator and never from torch's or numpy's
global state. A partition is a list with one int64 index tensor per client; the tensors are
disjoint, together cover every sample exactly once, and each is sorted ascending (a client
shuffles its own data when it trains).

Three schemes:

- ``iid``: a uniform random split into near-equal parts.
- ``dirichlet``: label skew controlled by a concentration ``alpha`` (Hsu, Qi and Brown, 2019,
  "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
  Classification"), in the per-class form most FL code uses (Li, Diao, Chen and He, 2022,
  "Federated Learning on Non-IID Data Silos: An Experimental Study").
- ``shards``: each client gets a few label-sorted shards (McMahan, Moore, Ramage, Hampson and
  Agüera y Arcas, 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
  Data").
"""

from __future__ import annotations

import numpy as np
import torch

from torchchain.errors import ConfigError

__all__ = ["PARTITIONS", "dirichlet_partition", "iid_partition", "partition", "shard_partition"]

PARTITIONS = ("iid", "dirichlet", "shards")
"""The values ``partition(kind=...)`` accepts."""

_MAX_DIRICHLET_ATTEMPTS = 1000


def iid_partition(num_samples: int, num_clients: int, *, seed: int) -> list[torch.Tensor]:
    """Split ``num_samples`` indices uniformly at random into ``num_clients`` parts.

    Part sizes differ by at most one (the first ``num_samples % num_clients`` clients get the
    extra sample).

    Args:
        num_samples: Number of samples to split.
        num_clients: Number of parts; at least 1 and at most ``num_samples``.
        seed: Seed of the shuffle.

    Returns:
        ``num_clients`` sorted int64 index tensors, disjoint and covering ``range(num_samples)``.

    Raises:
        ConfigError: If ``num_clients`` is below 1 or above ``num_samples``.
    """
    _check_num_clients(num_clients, num_samples, min_per_client=1)
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_samples, generator=generator)
    return [part.sort().values for part in torch.tensor_split(permutation, num_clients)]


def dirichlet_partition(
    targets: torch.Tensor, num_clients: int, *, alpha: float, seed: int, min_size: int = 1
) -> list[torch.Tensor]:
    """Label-skewed split: each class is divided among clients in Dirichlet(alpha) proportions.

    Dirichlet label skew was introduced by Hsu, Qi and Brown, 2019, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification". This is the per-class
    form of Yurochkin et al., 2019 and of the NIID-Bench (Li, Diao, Chen and He, 2022,
    "Federated Learning on Non-IID Data Silos: An Experimental Study"): for every class
    independently, proportions ``p ~ Dirichlet(alpha, ..., alpha)`` over the clients are drawn
    and the class's shuffled samples are cut in those proportions. Small ``alpha`` (e.g. 0.1)
    gives each client few labels; large ``alpha`` (e.g. 100) approaches an iid split. As in
    NIID-Bench, the whole draw is repeated (from the same seeded generator, so the result stays
    deterministic) until every client holds at least ``min_size`` samples.

    Args:
        targets: int64 class labels, shape ``(N,)``.
        num_clients: Number of clients; at least 1.
        alpha: Dirichlet concentration, > 0.
        seed: Seed of the draws and shuffles.
        min_size: Fewest samples any client may receive.

    Returns:
        ``num_clients`` sorted int64 index tensors, disjoint and covering ``range(N)``.

    Raises:
        ConfigError: If an argument is out of range, the targets are not class labels, or no
            draw in 1,000 attempts gives every client ``min_size`` samples.
    """
    labels = _class_labels(targets, "dirichlet")
    _check_num_clients(num_clients, len(labels), min_per_client=max(min_size, 1))
    if not alpha > 0:
        raise ConfigError(f"partition.alpha must be > 0; got {alpha}")
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0; got {min_size}")

    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_MAX_DIRICHLET_ATTEMPTS):
        clients: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for indices in class_indices:
            shuffled = rng.permutation(indices)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for client, part in enumerate(np.split(shuffled, cuts)):
                clients[client].append(part)
        parts = [np.sort(np.concatenate(pieces)) for pieces in clients]
        if min(len(part) for part in parts) >= min_size:
            return [torch.from_numpy(part).to(torch.int64) for part in parts]
    raise ConfigError(
        f"dirichlet partition could not give each of {num_clients} clients at least {min_size} "
        f"samples in {_MAX_DIRICHLET_ATTEMPTS} draws with alpha={alpha}: raise partition.alpha, "
        f"lower clients, or use partition.kind=iid"
    )


def shard_partition(
    targets: torch.Tensor, num_clients: int, *, shards_per_client: int = 2, seed: int
) -> list[torch.Tensor]:
    """Pathological non-iid split: each client gets ``shards_per_client`` label-sorted shards.

    McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
    Data" (their MNIST setting is 100 clients with 2 shards of 300 samples). Samples are sorted
    by label (ties by index), cut into ``num_clients * shards_per_client`` near-equal
    contiguous shards, and the shards are dealt to clients in a seeded random order. A shard
    holds one label unless it straddles a label boundary, so a client holds at most
    ``shards_per_client`` labels when every class size is a multiple of the shard size, and at
    most ``2 * shards_per_client`` otherwise.

    Args:
        targets: int64 class labels, shape ``(N,)``.
        num_clients: Number of clients; at least 1.
        shards_per_client: Shards dealt to each client; at least 1.
        seed: Seed of the deal.

    Returns:
        ``num_clients`` sorted int64 index tensors, disjoint and covering ``range(N)``.

    Raises:
        ConfigError: If an argument is out of range, the targets are not class labels, or
            there are fewer samples than shards.
    """
    labels = _class_labels(targets, "shards")
    if shards_per_client < 1:
        raise ConfigError(f"partition.shards_per_client must be >= 1; got {shards_per_client}")
    _check_num_clients(num_clients, len(labels), min_per_client=shards_per_client)

    by_label = torch.from_numpy(np.argsort(labels, kind="stable")).to(torch.int64)
    shards = torch.tensor_split(by_label, num_clients * shards_per_client)
    generator = torch.Generator().manual_seed(seed)
    deal = torch.randperm(len(shards), generator=generator).view(num_clients, shards_per_client)
    return [torch.cat([shards[s] for s in row.tolist()]).sort().values for row in deal]


def partition(
    kind: str,
    targets: torch.Tensor,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[torch.Tensor]:
    """Partition a training set by name: ``"iid"``, ``"dirichlet"`` or ``"shards"``.

    Args:
        kind: One of :data:`PARTITIONS`.
        targets: The training targets; any shape for ``iid`` (only their count is used),
            int64 labels ``(N,)`` for the label-based schemes.
        num_clients: Number of clients.
        seed: Seed of the partition.
        alpha: Dirichlet concentration (``dirichlet`` only).
        shards_per_client: Shards per client (``shards`` only).

    Returns:
        One sorted int64 index tensor per client, disjoint and covering every sample.

    Raises:
        ConfigError: If ``kind`` is unknown or the arguments do not fit the data.
    """
    if kind == "iid":
        return iid_partition(int(targets.shape[0]), num_clients, seed=seed)
    if kind == "dirichlet":
        return dirichlet_partition(targets, num_clients, alpha=alpha, seed=seed)
    if kind == "shards":
        return shard_partition(targets, num_clients, shards_per_client=shards_per_client, seed=seed)
    raise ConfigError(f"partition.kind must be one of {', '.join(PARTITIONS)}; got {kind!r}")


def _check_num_clients(num_clients: int, num_samples: int, *, min_per_client: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"clients must be >= 1; got {num_clients}")
    if num_clients * min_per_client > num_samples:
        raise ConfigError(
            f"clients={num_clients} needs at least {num_clients * min_per_client} training samples "
            f"({min_per_client} per client) but the dataset has {num_samples}: lower clients"
        )


def _class_labels(targets: torch.Tensor, kind: str) -> np.ndarray:
    if targets.ndim != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ConfigError(
            f"partition.kind={kind} splits by class label and needs integer targets of shape (N,); "
            f"got {targets.dtype} of shape {tuple(targets.shape)} (use partition.kind=iid for regression)"
        )
    return targets.detach().cpu().numpy()
