"""A federated client: local training on private data, then a signed update.

A client never sends its data, only ``Δ = θ_local − θ_global`` as canonical bytes plus a
transaction that binds the bytes' hash to the round and the block the update was computed
against, signed with the client's Ed25519 key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from torchchain.chain.block import Transaction
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.data import DataSplit
from torchchain.protocol.submission import Submission
from torchchain.updates.codecs import Codec, NoCodec, TopK, codec_seed, error_feedback_step
from torchchain.updates.delta import compute_delta
from torchchain.updates.serialize import update_to_bytes

__all__ = ["Client", "LocalTraining", "evaluate", "train_local", "train_sequential", "trainable_names"]


@dataclass(frozen=True)
class LocalTraining:
    """How each client trains in a round (the ``local_epochs``, ``batch_size``, ``lr`` config keys).

    Attributes:
        epochs: Passes over the local data per round (ignored when ``steps`` is set).
        steps: Exactly this many mini-batch steps per round instead of epochs, or ``None``.
        batch_size: Mini-batch size.
        lr: SGD learning rate.
        momentum: SGD momentum; the momentum buffer is kept on the client across rounds.
        task: ``"classification"`` (cross-entropy) or ``"regression"`` (mean squared error).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    steps: int | None = None
    task: str = "classification"


def _loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(output, target)
    return F.cross_entropy(output, target)


def _batches(num_samples: int, settings: LocalTraining, generator: torch.Generator):
    """Yield index batches: whole epochs, or exactly ``settings.steps`` batches drawn epoch by epoch."""
    remaining = settings.steps
    epochs = settings.epochs if remaining is None else None
    done_epochs = 0
    while True:
        order = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples, settings.batch_size):
            if remaining is not None:
                if remaining == 0:
                    return
                remaining -= 1
            yield order[start : start + settings.batch_size]
        done_epochs += 1
        if epochs is not None and done_epochs >= epochs:
            return


def train_local(
    model: nn.Module,
    data: DataSplit,
    settings: LocalTraining,
    *,
    device: torch.device,
    generator: torch.Generator,
    momentum_buffers: dict[str, torch.Tensor] | None = None,
) -> None:
    """Train ``model`` in place with plain SGD on ``data``.

    Args:
        model: The model, already holding the global weights and living on ``device``.
        data: The client's private data (on CPU; moved to ``device`` here).
        settings: Epochs or steps, batch size, learning rate, momentum, loss.
        device: Where to train.
        generator: CPU generator for the shuffling order (seeded per client and round).
        momentum_buffers: The client's momentum buffers by parameter name, updated in place, so
            momentum persists across rounds as in distributed SGD with worker momentum.
    """
    model.train()
    features = data.features.to(device)
    targets = data.targets.to(device)
    params = dict(model.named_parameters())
    for idx in _batches(len(data), settings, generator):
        idx = idx.to(device)
        model.zero_grad(set_to_none=True)
        loss = _loss(settings.task, model(features[idx]), targets[idx])
        loss.backward()
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is None:
                    continue
                step = p.grad
                if settings.momentum and momentum_buffers is not None:
                    buf = momentum_buffers.get(name)
                    buf = step.clone() if buf is None else buf.to(device).mul_(settings.momentum).add_(step)
                    momentum_buffers[name] = buf
                    step = buf
                p.add_(step, alpha=-settings.lr)


def train_sequential(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    datas: Sequence[DataSplit],
    settings: LocalTraining,
    *,
    device: torch.device,
    generators: Sequence[torch.Generator],
    momentum_buffers: Sequence[dict[str, torch.Tensor] | None],
) -> list[dict[str, torch.Tensor]]:
    """Each client in turn: load ``global_state`` into ``model``, :func:`train_local`, take the delta.

    Returns:
        Each client's ``θ_local − θ_global`` on CPU, in the order of ``datas``; ``model`` is left
        holding the last client's weights.
    """
    deltas = []
    for data, generator, buffers in zip(datas, generators, momentum_buffers):
        model.load_state_dict(global_state)
        train_local(model, data, settings, device=device, generator=generator, momentum_buffers=buffers)
        deltas.append(compute_delta(model.state_dict(), global_state))
    return deltas


def trainable_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that train, and of those that do not (``requires_grad=False``)."""
    trained, frozen = [], []
    for name, p in model.named_parameters():
        (trained if p.requires_grad else frozen).append(name)
    return trained, frozen


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSplit, *, task: str, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """Loss and accuracy (classification) or loss and RMSE (regression) of ``model`` on ``data``."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(data), batch_size):
        x = data.features[start : start + batch_size].to(device)
        y = data.targets[start : start + batch_size].to(device)
        out = model(x)
        if task == "regression":
            total_loss += F.mse_loss(out, y, reduction="sum").item() / y.shape[1]
        else:
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=1) == y).sum().item()
        count += len(y)
    loss = total_loss / max(count, 1)
    if task == "regression":
        return {"loss": loss, "rmse": loss**0.5}
    return {"loss": loss, "accuracy": correct / max(count, 1)}


@dataclass
class Client:
    """One federated party: its index, signing key, private data and role.

    Attributes:
        index: Position in the client list (0-based); names it in logs.
        key: The client's Ed25519 signing key; its public key is listed in the genesis block.
        data: The client's private training data.
        byzantine: Whether this client runs the configured attack.
        momentum_buffers: SGD momentum carried across rounds (empty when momentum is 0).
        codec_residual: What error feedback has not sent yet (codecs that drop coordinates,
            such as top-k); private to the client and checkpointed with it.
    """

    index: int
    key: SigningKey
    data: DataSplit
    byzantine: bool = False
    momentum_buffers: dict[str, torch.Tensor] | None = None
    codec_residual: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return self.key.public_key

    @property
    def label(self) -> str:
        """A name for logs that tells honest and malicious clients apart, e.g. ``client_03_byzantine``."""
        return f"client_{self.index:02d}_{'byzantine' if self.byzantine else 'honest'}"

    def submit(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        round: int,
        base_hash: str,
        seconds: dict[str, float] | None = None,
        codec: Codec | None = None,
        generator: torch.Generator | None = None,
        tamper: Callable[[bytes], bytes] | None = None,
    ) -> Submission:
        """Encode ``update`` with the chain's codec, hash it, and sign the transaction that commits to it.

        Args:
            update: The tensors to send (the delta, possibly poisoned: attacks act before encoding).
            round: The round the update is for.
            base_hash: Hash of the block whose model the update was computed against.
            seconds: If given, the time spent encoding, hashing and signing is added to its
                ``serialize``, ``hash`` and ``sign`` entries.
            codec: The chain's codec (default: none, canonical float tensors). A codec that
                drops coordinates (top-k) runs with error feedback on :attr:`codec_residual`.
            generator: The client's randomness for stochastic rounding.
            tamper: A malicious client's change to the encoded bytes before it signs them
                (:meth:`~torchchain.attacks.base.Attack.tamper_payload`).
        """
        codec = NoCodec() if codec is None else codec
        t0 = time.perf_counter()
        seed = codec_seed(round, self.public_key)
        rng = torch.Generator().manual_seed(0) if generator is None else generator
        if isinstance(codec, TopK):
            payload, self.codec_residual = error_feedback_step(update, self.codec_residual, codec, seed=seed, generator=rng)
        elif isinstance(codec, NoCodec):
            payload = update_to_bytes(update)
        else:
            payload = codec.encode(update, seed=seed, generator=rng)
        if seconds is not None:
            seconds["serialize"] = seconds.get("serialize", 0.0) + time.perf_counter() - t0
        return self.sign_payload(payload, round=round, base_hash=base_hash, codec_tag=codec.tag(), seconds=seconds, tamper=tamper)

    def sign_payload(
        self,
        payload: bytes,
        *,
        round: int,
        base_hash: str,
        codec_tag: str,
        seconds: dict[str, float] | None = None,
        tamper: Callable[[bytes], bytes] | None = None,
    ) -> Submission:
        """Hash already encoded update bytes and sign the transaction that commits to them.

        Args:
            payload: The encoded update (a codec's bytes, or a masked input on a secagg chain).
            round: The round the update is for.
            base_hash: Hash of the block whose model the update was computed against.
            codec_tag: What the transaction names as the payload's encoding.
            seconds: If given, the time spent hashing and signing is added to its ``hash`` and
                ``sign`` entries (and tampering to ``serialize``).
            tamper: A malicious client's change to the bytes before it signs them.
        """
        t0 = time.perf_counter()
        if tamper is not None:
            payload = tamper(payload)
        t1 = time.perf_counter()
        digest = sha256_hex(payload)
        t2 = time.perf_counter()
        tx = Transaction(
            client=self.public_key,
            round=round,
            base_hash=base_hash,
            update_hash=digest,
            num_samples=len(self.data),
            codec=codec_tag,
        ).signed(self.key)
        t3 = time.perf_counter()
        if seconds is not None:
            for name, spent in (("serialize", t1 - t0), ("hash", t2 - t1), ("sign", t3 - t2)):
                seconds[name] = seconds.get(name, 0.0) + spent
        return Submission(transaction=tx, payload=payload)
