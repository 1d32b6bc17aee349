"""From a composed config to a finished run: validate, build the objects, run, summarize.

This is the one module that reads the config tree; the runtime below it takes plain objects.
``train.py`` calls :func:`run` with the config Hydra composed; tests call it with a config
from Hydra's Compose API.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from torchchain.attacks.base import Attack
from torchchain.chain.ledger import Ledger, write_atomic
from torchchain.attacks.none import NoAttack
from torchchain.data import TaskData
from torchchain.errors import ConfigError
from torchchain.protocol.privacy import PrivacyRules
from torchchain.protocol.registry import build_strategy, builtin_strategy_targets
from torchchain.protocol.retention import updates_kept
from torchchain.protocol.round import max_update_bytes
from torchchain.protocol.sampling import sample_size
from torchchain.protocol.secure_round import secagg_config
from torchchain.runtime.client import LocalTraining
from torchchain.runtime.executor import EXECUTORS
from torchchain.runtime.local_privacy import LocalPrivacy
from torchchain.runtime.simulation import Simulation, SimulationSettings
from torchchain.updates.serialize import update_to_bytes
from torchchain.strategies.base import Strategy
from torchchain.telemetry import RunWriter

__all__ = ["DEFAULT_BYZANTINE_FRACTION", "resolve_byzantine", "resolve_device", "run"]

#: Share of clients that are malicious when an attack is set and ``byzantine`` is not.
DEFAULT_BYZANTINE_FRACTION = 0.2

#: Local settings: where this node runs and how it shows the run, not what the chain computes.
#: They are left out of the genesis config, so machines with other paths or devices can hold
#: the same chain, and ``resume=`` may change them.
LOCAL_KEYS = (
    "resume", "runtime", "device", "dataset.root", "dataset.download", "privacy.noise_seed", "privacy.dropout",
)


def resolve_byzantine(byzantine: int | float | None, clients: int, *, attack_set: bool) -> int:
    """Turn the ``byzantine`` config value into a count of malicious clients.

    Args:
        byzantine: A count (int >= 0), a fraction of ``clients`` in (0, 1), or ``None`` for the
            default: 20% of the clients (at least one) when an attack is set, else none.
        clients: Number of clients.
        attack_set: Whether an attack other than ``none`` is configured.

    Raises:
        ConfigError: for a negative count, a fraction outside (0, 1), or a count not below ``clients``.
    """
    if byzantine is None:
        count = max(1, math.floor(DEFAULT_BYZANTINE_FRACTION * clients + 1e-9)) if attack_set else 0
    elif isinstance(byzantine, bool):
        raise ConfigError(f"byzantine must be a count or a fraction, got {byzantine!r}")
    elif isinstance(byzantine, int):
        if byzantine < 0:
            raise ConfigError(f"byzantine={byzantine} is negative: give a count >= 0 or a fraction in (0, 1)")
        count = byzantine
    elif isinstance(byzantine, float):
        if not 0.0 < byzantine < 1.0:
            raise ConfigError(f"byzantine={byzantine} as a fraction must lie in (0, 1); for a count give an integer")
        count = math.floor(byzantine * clients + 1e-9)
    else:
        raise ConfigError(f"byzantine must be a count or a fraction, got {byzantine!r}")
    if count >= clients:
        raise ConfigError(
            f"byzantine={count} malicious clients out of clients={clients}: at least one client must be honest; "
            f"lower byzantine or raise clients"
        )
    return count


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given.

    Raises:
        ConfigError: for an unknown name, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but this machine has no CUDA device: use device=cpu or device=auto")
        return torch.device(name)
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def _positive_int(cfg: DictConfig, key: str, *, maximum: int | None = None) -> int:
    """``cfg.<key>`` as an int in ``[1, maximum]``; ``maximum`` defaults to the key's entry in ``_UPPER_BOUNDS``.

    Raises:
        ConfigError: naming ``key``, for a bool, a non-integer, a value below 1 or above the bound.
    """
    value = OmegaConf.select(cfg, key)
    if maximum is None:
        maximum = _UPPER_BOUNDS.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = f" in [1, {maximum:,}]" if maximum is not None else ""
        raise ConfigError(f"{key} must be a positive integer{hint}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"{key}={value:,} is above the limit of {maximum:,}: give {key} an integer in [1, {maximum:,}]"
        )
    return value


def _instantiate(node: DictConfig, key: str, expected: type, **kwargs: Any) -> Any:
    """Build ``node`` with Hydra, turning every failure into a ConfigError that names ``key``."""
    try:
        obj = instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):  # the target's own, already actionable message
            raise exc.__cause__ from None
        raise ConfigError(f"{key} could not be created from _target_={node.get('_target_')!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not isinstance(obj, expected):
        raise ConfigError(f"{key}._target_={node.get('_target_')!r} is not a subclass of {expected.__module__}.{expected.__name__}")
    return obj


#: Largest accepted value of each size in the config. Far above any sensible run, they stop a typo
#: (``local_epochs=1e9``, ``rounds=10000000000``) from starting a run that would never finish or
#: would exhaust memory; raise them here if a real experiment needs more.
_UPPER_BOUNDS: dict[str, int] = {
    "clients": 100_000,
    "rounds": 1_000_000,
    "local_epochs": 1_000,
    "local_steps": 1_000_000,
    "batch_size": 1_000_000,
    "partition.shards_per_client": 100_000,
    "runtime.eval_every": 1_000_000,
}

#: Seeds are used as given by NumPy and scikit-learn (the dataset train/test split), which take
#: integers in [0, 2**32 - 1]; torch's generators take them too.
_SEED_MAX = 2**32 - 1

#: Largest accepted ``chain.max_update_mb``: 4 GiB, far above the updates of any model here.
_MAX_UPDATE_MB_MAX = 4096


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_number(cfg: DictConfig, key: str, *, maximum: float | None = None, hint: str = "") -> float:
    """``cfg.<key>`` as a finite float in ``(0, maximum]``, else a ConfigError naming ``key``."""
    value = OmegaConf.select(cfg, key)
    limit = f" and <= {maximum:g}" if maximum is not None else ""
    if not _is_number(value) or not math.isfinite(value) or not value > 0 or (maximum is not None and value > maximum):
        raise ConfigError(f"{key} must be a finite number > 0{limit}, got {value!r}{hint}")
    return float(value)


def _seed(cfg: DictConfig) -> int:
    """``cfg.seed`` as an int in ``[0, _SEED_MAX]``."""
    value = cfg.get("seed")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _SEED_MAX:
        raise ConfigError(f"seed must be an integer in [0, 2**32 - 1 = {_SEED_MAX}], got {value!r}")
    return value


def _momentum(cfg: DictConfig) -> float:
    value = cfg.get("momentum", 0.0)
    if not _is_number(value) or not 0.0 <= value < 1.0:  # NaN fails the comparison too
        raise ConfigError(f"momentum must be a number in [0, 1) (0 for plain SGD), got {value!r}")
    return float(value)


def _flag(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _difficulty(cfg: DictConfig) -> int:
    value = OmegaConf.select(cfg, "chain.difficulty")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 40:
        raise ConfigError(f"chain.difficulty is in leading zero bits and must be an integer in [0, 40], got {value!r}")
    return value


def _partition_kind(cfg: DictConfig) -> str:
    kind = OmegaConf.select(cfg, "partition.kind")
    if kind not in ("iid", "dirichlet", "shards"):
        raise ConfigError(f"partition.kind must be one of iid, dirichlet, shards; got {kind!r}")
    return kind


def _privacy(cfg: DictConfig, executor: str) -> LocalPrivacy:
    """The client-side privacy mechanism, after checking the protocol's privacy rules too."""
    section = cfg.get("privacy")
    privacy = None if section is None else OmegaConf.to_container(section, resolve=True)
    if privacy is not None and not isinstance(privacy, dict):
        raise ConfigError("privacy must be a config group (privacy=none | client_dp | dpsgd | secagg)")
    protocol = {key: cfg.get(key) for key in ("batch_size", "local_epochs", "local_steps")}
    PrivacyRules.from_config({**protocol, "privacy": privacy}, ())
    local = LocalPrivacy.from_config(privacy, noise_seed=None if privacy is None else privacy.get("noise_seed"))
    if local.kind == "dpsgd" and executor in ("batched", "processes"):
        raise ConfigError(
            f"privacy=dpsgd trains each client with Opacus one after another; runtime.executor={executor} "
            "cannot run it: use runtime.executor=auto or sequential"
        )
    return local


def _check_secagg(cfg: DictConfig, clients: int) -> None:
    """``privacy=secagg``: the strategy, codec and secagg values the chain will check, checked now.

    Raises:
        ConfigError: A robust rule, pre-aggregation steps, sample-count weights, a codec, or a
            bad ``privacy.threshold``/``clip``/``frac_bits``/``ring_bits`` (see
            :func:`torchchain.protocol.secure_round.secagg_config`).
    """
    protocol = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg.get(key), DictConfig) else cfg.get(key)
        for key in ("privacy", "strategy", "codec", "clients_per_round")
    }
    per_round = sample_size(protocol, clients)
    secagg_config(protocol, round_size=clients if per_round is None else per_round)


def _check_config(cfg: DictConfig) -> dict[str, Any]:
    """Check every plain value of the config that needs no data, model or device; return them, typed.

    It builds nothing, reads no data and writes nothing, so :func:`run` can call it before
    anything else and a bad value stops the run at once with a :class:`ConfigError` that names
    the key and says what to give instead. The bounds are in ``_UPPER_BOUNDS``, ``_SEED_MAX``
    and ``_MAX_UPDATE_MB_MAX``. ``byzantine`` and ``device`` are checked by
    :func:`resolve_byzantine` and :func:`resolve_device`.

    Raises:
        ConfigError: for the first bad value.
    """
    steps = cfg.get("local_steps")
    # runtime.executor / batch_clients / workers: local, so a resumed run's older config.yaml may lack them.
    executor = OmegaConf.select(cfg, "runtime.executor", default="auto")
    if executor not in EXECUTORS:
        raise ConfigError(f"runtime.executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    batch_clients = 64  # torchchain.runtime.executor.DEFAULT_BATCH_CLIENTS
    if OmegaConf.select(cfg, "runtime.batch_clients", default=...) is not ...:
        batch_clients = _positive_int(cfg, "runtime.batch_clients", maximum=100_000)
    workers = OmegaConf.select(cfg, "runtime.workers", default=None)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024):
        raise ConfigError(
            f"runtime.workers must be an integer in [1, 1024] (worker processes of runtime.executor=processes) "
            f"or null for one per usable core, got {workers!r}"
        )
    mine_workers = 1
    if OmegaConf.select(cfg, "runtime.mine_workers", default=...) is not ...:
        mine_workers = _positive_int(cfg, "runtime.mine_workers", maximum=256)
    privacy = _privacy(cfg, executor)
    clients = _positive_int(cfg, "clients")
    if privacy.kind == "secagg":
        _check_secagg(cfg, clients)
    return {
        "clients": clients,
        "rounds": _positive_int(cfg, "rounds"),
        "seed": _seed(cfg),
        "local_epochs": _positive_int(cfg, "local_epochs"),
        "local_steps": None if steps is None else _positive_int(cfg, "local_steps"),
        "batch_size": _positive_int(cfg, "batch_size"),
        "lr": _positive_number(cfg, "lr", hint=" (the client SGD learning rate, e.g. lr=0.1)"),
        "momentum": _momentum(cfg),
        "partition.kind": _partition_kind(cfg),
        "partition.alpha": _positive_number(cfg, "partition.alpha", hint=" (Dirichlet concentration, e.g. 0.5)"),
        "partition.shards_per_client": _positive_int(cfg, "partition.shards_per_client"),
        "chain.difficulty": _difficulty(cfg),
        "chain.max_update_mb": _positive_number(
            cfg, "chain.max_update_mb", maximum=_MAX_UPDATE_MB_MAX,
            hint=" (the node rejects larger updates; the default is 64)",
        ),
        "runtime.eval_every": _positive_int(cfg, "runtime.eval_every"),
        "runtime.progress": _flag(cfg, "runtime.progress"),
        "runtime.executor": executor,
        "runtime.batch_clients": batch_clients,
        "runtime.workers": workers,
        "runtime.mine_workers": mine_workers,
        "privacy": privacy,
        "chain.keep_updates": updates_kept({"chain": {"keep_updates": OmegaConf.select(cfg, "chain.keep_updates", default="all")}}),
    }


def _settings(cfg: DictConfig, *, byzantine: int, device: torch.device, task: str) -> SimulationSettings:
    """The runtime's settings from ``cfg``; every value is checked by :func:`_check_config` first."""
    checked = _check_config(cfg)
    return SimulationSettings(
        clients=checked["clients"],
        rounds=checked["rounds"],
        byzantine=byzantine,
        seed=checked["seed"],
        device=device,
        training=LocalTraining(
            epochs=checked["local_epochs"],
            steps=checked["local_steps"],
            batch_size=checked["batch_size"],
            lr=checked["lr"],
            momentum=checked["momentum"],
            task=task,
        ),
        partition=checked["partition.kind"],
        alpha=checked["partition.alpha"],
        shards_per_client=checked["partition.shards_per_client"],
        difficulty=checked["chain.difficulty"],
        eval_every=checked["runtime.eval_every"],
        progress=checked["runtime.progress"],
        executor=checked["runtime.executor"],
        batch_clients=checked["runtime.batch_clients"],
        workers=checked["runtime.workers"],
        mine_workers=checked["runtime.mine_workers"],
        privacy=checked["privacy"],
    )


def _recorded_config(cfg: DictConfig, *, byzantine: int) -> dict[str, Any]:
    """The protocol part of the config, as plain JSON for the genesis block: everything but
    :data:`LOCAL_KEYS`.

    ``byzantine`` is recorded as the resolved count, so an auditor needs no defaults to know it.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise ConfigError("the config must be a mapping")
    for key in LOCAL_KEYS:
        node: Any = container
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    container["byzantine"] = byzantine
    try:
        json.dumps(container, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the config holds a value that cannot be recorded in the ledger: {exc}") from None
    return container


def _trusted(cfg: DictConfig) -> tuple[str, ...]:
    """The user's own strategy class, when the config names one that is not built in: the user
    chose it, so this run may import it (an auditor must name it with ``--trust``)."""
    target = OmegaConf.select(cfg, "strategy._target_")
    if isinstance(target, str) and target not in builtin_strategy_targets():
        return (target,)
    return ()


def _hparams(cfg: DictConfig, strategy: Strategy, attack: Attack, byzantine: int, dataset: str) -> dict[str, Any]:
    """What a sweep varies, flat, for TensorBoard's HParams tab: the parts and their arguments."""
    params: dict[str, Any] = {
        "dataset": dataset,
        "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
        "clients": int(cfg.clients),
        "byzantine": byzantine,
        "rounds": int(cfg.rounds),
        "lr": float(cfg.lr),
        "local_epochs": int(cfg.local_epochs),
        "partition": str(cfg.partition.kind),
        "seed": int(cfg.seed),
    }
    for prefix, described in (("strategy", strategy.describe()), ("attack", attack.describe())):
        for key, value in described.items():
            name = prefix if key == "name" else f"{prefix}.{key}"
            params[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return params


def _final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    return {k: summary[k] for k in ("final_accuracy", "final_loss", "final_rmse") if summary.get(k) is not None}


def _print_summary(summary: Mapping[str, Any], run_dir: Path) -> None:
    if "final_accuracy" in summary:
        quality = f"accuracy {summary['final_accuracy']:.4f}"
    else:
        quality = f"rmse {summary['final_rmse']:.4f}"
    print(
        f"\ntorchchain: {quality}, loss {summary['final_loss']:.4f} after {summary['rounds']} rounds; "
        f"{summary['blocks']} blocks, {summary['rejected']} rejected updates; "
        f"{summary['wall_seconds']:.1f} s ({summary['median_round_seconds']:.3f} s/round median)\n"
        f"  ledger:      {summary['ledger']}  (check it: torchchain verify {summary['ledger']})\n"
        f"  summary:     {run_dir / 'summary.json'}\n"
        f"  tensorboard: tensorboard --logdir {run_dir.parent}"
    )


def _is_local(key: str) -> bool:
    return any(key == local or key.startswith(local + ".") for local in LOCAL_KEYS) or key.startswith("hydra.")


def _resume_config(run_dir: Path, current: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The config a run folder was started with (its ``config.yaml``), with the command line's
    local overrides applied.

    Raises:
        ConfigError: The folder holds no config.yaml, or an override changes the protocol
            (anything recorded in the genesis block), which a resumed chain cannot change.
    """
    stored_file = run_dir / "config.yaml"
    if not stored_file.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it holds no config.yaml; give the folder of a torchchain run")
    stored = OmegaConf.load(stored_file)
    refused = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume":
            continue
        if _is_local(key):
            OmegaConf.update(stored, key, OmegaConf.select(current, key), force_add=True)
        else:
            refused.append(override)
    if refused:
        raise ConfigError(
            f"cannot resume {run_dir} with {' '.join(refused)}: these keys are part of the chain's protocol, "
            f"recorded in its genesis block, and a resumed run keeps them; only local settings "
            f"({', '.join(LOCAL_KEYS[1:])}) may change on resume. Start a new run to change the others."
        )
    return stored


def _finished_summary(run_dir: Path, rounds: int) -> dict[str, Any] | None:
    """The summary of a run that already finished every round and wrote it, else ``None``.

    A run killed after its last block but before ``summary.json`` is not finished: resuming
    it evaluates the final model and writes the summary.
    """
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file() or not any((run_dir / "ledger" / "blocks").glob("*.json")):
        return None
    ledger = Ledger.open(run_dir / "ledger")
    if ledger.height < rounds:
        return None
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        # A summary cut short (written by an older version, or a damaged disk): write it again.
        print(f"torchchain: {summary_file} is unreadable; evaluating the final model to write it again")
        return None
    if not isinstance(summary, dict) or summary.get("head") != ledger.head_hash:
        print(f"torchchain: {summary_file} does not describe the ledger's head; writing it again")
        return None
    print(f"torchchain: {run_dir} already finished all {rounds} rounds (ledger height {ledger.height}); nothing to do")
    return summary


@dataclasses.dataclass(frozen=True)
class _PeerRun:
    """How a run of peers is set up (``runtime.*``), checked."""

    kind: str  # simulation (threads of this process) | distributed (one torchrun process each)
    peers: int  # 0: the world size torchrun sets
    timeout: float
    backend: str
    byzantine_peers: int
    peer_fault: str

    def faults(self, world: int) -> dict[int, Any]:
        """The faulty peers by rank: the ``byzantine_peers`` highest ranks, colluding."""
        from torchchain.runtime.peer_behaviour import PeerFault

        if self.byzantine_peers >= world:
            raise ConfigError(
                f"runtime.byzantine_peers={self.byzantine_peers} but the run has {world} peers: at least one peer "
                "must be honest; lower runtime.byzantine_peers"
            )
        faulty = set(range(world - self.byzantine_peers, world))
        return {rank: PeerFault(self.peer_fault, coalition=faulty - {rank}) for rank in sorted(faulty)}


def _peer_runtime(cfg: DictConfig) -> _PeerRun | None:
    """How the run's peers are set up when it is a run of peers (``runtime=distributed``, or
    ``runtime.peers`` above 1), else ``None``.

    Raises:
        ConfigError: An unknown kind, a bad peer count, timeout, backend, ``runtime.byzantine_peers``
            or ``runtime.peer_fault``, or faulty peers asked of a run with one node.
    """
    from torchchain.runtime.peer_behaviour import Fault

    kind = OmegaConf.select(cfg, "runtime.kind", default="simulation")
    if kind not in ("simulation", "distributed"):
        raise ConfigError(f"runtime.kind must be simulation or distributed, got {kind!r}")
    peers = OmegaConf.select(cfg, "runtime.peers", default=1)
    if kind == "distributed" and peers is None:
        peers = 0  # the world size torchrun sets
    elif isinstance(peers, bool) or not isinstance(peers, int) or not 1 <= peers <= 256:
        raise ConfigError(f"runtime.peers must be an integer in [1, 256] (1: one mining node), got {peers!r}")
    byzantine_peers = OmegaConf.select(cfg, "runtime.byzantine_peers", default=0)
    if isinstance(byzantine_peers, bool) or not isinstance(byzantine_peers, int) or byzantine_peers < 0:
        raise ConfigError(f"runtime.byzantine_peers must be a count of faulty peers >= 0, got {byzantine_peers!r}")
    fault = OmegaConf.select(cfg, "runtime.peer_fault", default=Fault.WRONG_MODEL.value)
    if fault not in {f.value for f in Fault}:
        raise ConfigError(
            f"runtime.peer_fault must be one of {', '.join(f.value for f in Fault)} (what a faulty peer does), "
            f"got {fault!r}"
        )
    if kind == "simulation" and peers == 1:
        if byzantine_peers:
            raise ConfigError(
                f"runtime.byzantine_peers={byzantine_peers} needs a run of peers: set runtime.peers to the number of "
                "peers (e.g. runtime.peers=4), or use runtime=distributed"
            )
        return None
    if peers and byzantine_peers >= peers:
        raise ConfigError(
            f"runtime.byzantine_peers={byzantine_peers} of runtime.peers={peers}: at least one peer must be honest; "
            "lower runtime.byzantine_peers"
        )
    if byzantine_peers and fault == Fault.BAD_NONCE.value and OmegaConf.select(cfg, "chain.difficulty") == 0:
        raise ConfigError(
            "runtime.peer_fault=bad_nonce needs chain.difficulty > 0: at difficulty 0 every nonce is valid"
        )
    timeout = OmegaConf.select(cfg, "runtime.timeout", default=60)
    if not _is_number(timeout) or not 0 < timeout <= 86_400:
        raise ConfigError(f"runtime.timeout must be a number of seconds in (0, 86400], got {timeout!r}")
    backend = str(OmegaConf.select(cfg, "runtime.backend", default="auto"))
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"runtime.backend must be auto, gloo or nccl, got {backend!r}")
    return _PeerRun(
        kind=kind, peers=peers, timeout=float(timeout), backend=backend, byzantine_peers=byzantine_peers,
        peer_fault=fault,
    )


def _run_peers(
    run_dir: Path,
    peer_run: _PeerRun,
    *,
    data: TaskData,
    model: torch.nn.Module,
    attack: Attack,
    settings: SimulationSettings,
    recorded: dict[str, Any],
    trusted: tuple[str, ...],
    resume: bool,
    config_text: str,
    hparams: dict[str, Any],
) -> dict[str, Any]:
    """Run the peers (:mod:`torchchain.runtime.peer`) and write this process's ``summary.json``:
    in process, rank 0's view; under torchrun, this rank's. Rank 0 alone writes TensorBoard
    events (``<run>/tensorboard``)."""
    import time

    from torchchain.runtime.peer import run_in_process, run_peer

    started = time.perf_counter()
    common = {
        "data": data, "model": model, "attack": attack, "settings": settings, "config": recorded, "trusted": trusted,
        "resume": resume,
    }
    writer = None
    try:
        if peer_run.kind == "distributed":
            from torchchain.runtime.transport import DistributedTransport

            backend = None if peer_run.backend == "auto" else peer_run.backend
            transport = DistributedTransport(timeout=peer_run.timeout, backend=backend)
            try:
                world = transport.world_size
                if peer_run.peers and world != peer_run.peers:
                    raise ConfigError(f"runtime.peers={peer_run.peers} but torchrun started {world} processes")
                faults = peer_run.faults(world)
                _warn_faulty(peer_run.byzantine_peers, world, transport.rank)
                if transport.rank == 0:
                    writer = _peer_writer(run_dir, config_text)
                on_round = None if writer is None else _round_logger(writer, data, settings)
                outcomes = [
                    run_peer(transport, run_dir=run_dir, fault=faults.get(transport.rank), on_round=on_round, **common)
                ]
            finally:
                transport.close()
        else:
            world = peer_run.peers
            faults = peer_run.faults(world)
            _warn_faulty(peer_run.byzantine_peers, world, 0)
            writer = _peer_writer(run_dir, config_text)
            outcomes = run_in_process(
                run_dir=run_dir, peers=world, timeout=peer_run.timeout, faults=faults,
                on_round=_round_logger(writer, data, settings), **common,
            )
        mine = outcomes[0]
        if writer is not None and mine.error is None:
            writer.hparams(hparams, {f"final_{k}": v for k, v in mine.metrics.items() if k in ("accuracy", "loss", "rmse")})
    finally:
        if writer is not None:
            writer.close()
    if mine.error is not None:
        raise mine.error
    metrics = {f"final_{k}": v for k, v in mine.metrics.items() if k in ("accuracy", "loss", "rmse")}
    rounds = [s.seconds["round"] for s in mine.stats]
    summary: dict[str, Any] = {
        **metrics,
        "rounds": settings.rounds,
        "blocks": mine.height + 1,
        "ledger": str(mine.ledger.resolve()),
        "head": mine.head,
        "model_hash": mine.model_hash,
        "peers": world,
        "rank": mine.rank,
        "byzantine_peers": sorted(faults),
        "peer_fault": peer_run.peer_fault if faults else None,
        "rejected_proposals": len(mine.rejections()),
        "wall_seconds": time.perf_counter() - started,
        "median_round_seconds": statistics.median(rounds) if rounds else 0.0,
        "consensus_seconds": round(sum(s.consensus_seconds for s in mine.stats), 4),
        "bytes_sent": sum(s.bytes_sent for s in mine.stats),
        "bytes_received": sum(s.bytes_received for s in mine.stats),
        "voted_out": sum(s.voted_out for s in mine.stats),
        "clients": settings.clients,
        "byzantine": list(mine.byzantine_clients),
    }
    if peer_run.kind == "simulation":
        summary["heads"] = [o.head for o in outcomes]
    if mine.rank != 0:  # under torchrun every rank shares the run folder; rank 0 writes the summary
        return summary
    write_atomic(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(
        f"\ntorchchain: rank {mine.rank}: {mine.height} blocks committed by a majority of the peers, head "
        f"{mine.head[:12]}, {summary['rejected_proposals']} proposals rejected\n"
        f"  ledger:  {summary['ledger']}  (check it: torchchain audit {summary['ledger']})\n"
        f"  summary: {run_dir / 'summary.json'}"
    )
    return summary


def _peer_writer(run_dir: Path, config_text: str) -> RunWriter:
    writer = RunWriter(run_dir / "tensorboard", rounds_file=run_dir / "rounds.jsonl")
    writer.config(config_text)
    return writer


def _round_logger(writer: RunWriter, data: TaskData, settings: SimulationSettings) -> Callable[..., None]:
    """What rank 0 logs after each committed round: the evaluation (every ``eval_every`` rounds
    and at the last), the chain, and where the round's time went."""
    from torchchain.protocol.record import RoundRecord
    from torchchain.runtime.peer import evaluate_model

    def log(peer: Any, block: Any, stats: Any) -> None:
        round = block.header.round
        scalars: dict[str, float] = {}
        if round % settings.eval_every == 0 or round == settings.rounds:
            metrics = evaluate_model(peer.model, peer.global_state, data, device=settings.device, attack=peer.attack)
            scalars.update({f"eval/{k}": v for k, v in metrics.items()})
        scalars.update(
            {
                "chain/height": peer.ledger.height,
                "chain/mine_seconds": stats.seconds["mine"],
                "chain/rejected": RoundRecord.from_block(block).rejected.total,
                "chain/proposals": stats.proposals,
                "chain/voted_out": stats.voted_out,
                "chain/bytes_sent": stats.bytes_sent,
                "chain/bytes_received": stats.bytes_received,
                "time/round_seconds": stats.seconds["round"],
                "time/consensus_seconds": stats.consensus_seconds,
                **{f"time/{stage}": seconds for stage, seconds in stats.seconds.items() if stage != "round"},
            }
        )
        writer.scalars(round, scalars)

    return log


def _check_validation(cfg: DictConfig, peer_run: _PeerRun | None) -> None:
    """``validation``: its values, and that votes have peers to cast them."""
    from torchchain.protocol.vote import VoteRules

    section = cfg.get("validation")
    if section is None:
        return
    rules = VoteRules.from_config({"validation": OmegaConf.to_container(section, resolve=True)})
    if rules.votes and peer_run is None:
        raise ConfigError(
            "validation=vote needs a run of peers (every peer votes on every update): set runtime.peers to the "
            "number of peers (e.g. runtime.peers=3), or use runtime=distributed"
        )


def _restarted_by_torchrun(peer_run: _PeerRun | None, run_dir: Path) -> bool:
    """Whether torchrun restarted this process after a failure (``--max-restarts``) in a run
    folder that already holds the run: then every rank continues from its ledger."""
    if peer_run is None or peer_run.kind != "distributed":
        return False
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return restarts.isdigit() and int(restarts) > 0 and (run_dir / "config.yaml").is_file()


def _warn_faulty(faulty: int, world: int, rank: int) -> None:
    if faulty and 2 * faulty >= world and rank == 0:
        print(
            f"torchchain: runtime.byzantine_peers={faulty} of {world} peers: the honest peers are no strict majority, "
            "so nothing can be promised; they stop with 'no majority' (or 'outvoted') rather than follow a block "
            "they refuse"
        )


def run(cfg: DictConfig, run_dir: str | Path, *, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Validate ``cfg``, train, and write ``summary.json`` into ``run_dir``.

    Everything that can be checked without data is checked first, so a bad value fails in a
    second with a :class:`~torchchain.errors.ConfigError` that says what to change.

    With ``resume=<run folder>`` the run in that folder continues from its last whole block with
    the config it was started with (its ``config.yaml``); ``run_dir`` is then not used.
    ``overrides`` (the command line's ``key=value`` list) may change local settings
    (:data:`LOCAL_KEYS`) on resume; any other override is refused with a ConfigError.

    Returns:
        The summary (final metrics, rounds, blocks, rejected updates, ledger path, timings).
    """
    resuming = cfg.get("resume") is not None
    if resuming:
        run_dir = Path(str(cfg.resume))
        cfg = _resume_config(run_dir, cfg, overrides)
        done = _finished_summary(run_dir, _positive_int(cfg, "rounds"))
        if done is not None:
            return done
        print(f"torchchain: resuming {run_dir}")
    run_dir = Path(run_dir)
    _check_config(cfg)  # every value that needs no data, before anything is built
    peer_run = _peer_runtime(cfg)
    _check_validation(cfg, peer_run)
    if not resuming and _restarted_by_torchrun(peer_run, run_dir):
        resuming = True
        print(f"torchchain: restarted by torchrun; resuming {run_dir}")
    clients = _positive_int(cfg, "clients")
    device = resolve_device(str(cfg.device))
    attack = _instantiate(cfg.attack, "attack", Attack)
    byzantine = resolve_byzantine(cfg.byzantine, clients, attack_set=not isinstance(attack, NoAttack))
    attack.setup(num_clients=clients, num_byzantine=byzantine)
    # Every size, rate and seed is checked before any data is loaded or any file written.
    settings = _settings(cfg, byzantine=byzantine, device=device, task="classification")
    recorded = _recorded_config(cfg, byzantine=byzantine)
    trusted = _trusted(cfg)
    # The strategy is built the way every validator and auditor builds it: from the recorded
    # config, by the protocol's allow-list builder (never Hydra).
    per_round = sample_size(recorded, clients)
    rows = clients if per_round is None else per_round  # a round aggregates at most the sampled clients
    try:
        strategy = build_strategy(
            recorded.get("strategy"), num_clients=rows, num_byzantine=min(byzantine, rows), trusted=trusted
        )
    except ConfigError as exc:
        if per_round is None:
            raise
        raise ConfigError(f"{exc} (each round aggregates the clients_per_round={per_round} sampled clients)") from None

    torch.manual_seed(settings.seed)  # the initial model: the one draw that uses the global stream
    data = _instantiate(cfg.dataset, "dataset", TaskData)
    settings = dataclasses.replace(settings, training=dataclasses.replace(settings.training, task=data.task))
    if settings.clients > len(data.train):
        raise ConfigError(f"clients={clients} exceeds the {len(data.train)} training samples of {data.name}")
    model_options = {"input_shape": list(data.input_shape), "num_outputs": data.num_outputs}
    model = _instantiate(cfg.model, "model", torch.nn.Module, **model_options)
    # runtime.executor=processes builds the same architecture in each worker process from plain values.
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model_factory = functools.partial(instantiate, model_config, _convert_="all", **model_options)
    settings = dataclasses.replace(settings, model_factory=model_factory)
    floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    update_bytes = len(update_to_bytes(floats))
    secagg = secagg_config(recorded, round_size=rows)
    if secagg is not None:  # a masked input: a short header, then one ring word per coordinate
        update_bytes = 512 + secagg.word_bytes * sum(v.numel() for v in floats.values())
    limit = max_update_bytes(recorded)
    if update_bytes > limit:
        raise ConfigError(
            f"chain.max_update_mb={cfg.chain.max_update_mb} is below this model's update size of "
            f"{update_bytes / (1 << 20):.3f} MB, so every update would be rejected: raise chain.max_update_mb"
        )

    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    if peer_run is not None:
        return _run_peers(
            run_dir, peer_run, data=data, model=model, attack=attack, settings=settings, recorded=recorded,
            trusted=trusted, resume=resuming, config_text=OmegaConf.to_yaml(cfg),
            hparams=_hparams(cfg, strategy, attack, byzantine, data.name),
        )
    writer = RunWriter(run_dir / "tensorboard", rounds_file=run_dir / "rounds.jsonl")
    writer.config(OmegaConf.to_yaml(cfg))
    try:
        sim = Simulation(
            data=data,
            model=model,
            attack=attack,
            settings=settings,
            run_dir=run_dir,
            config=recorded,
            writer=writer,
            resume=resuming,
            trusted=trusted,
        )
        try:
            summary = sim.run()
        finally:
            sim.close()
        writer.hparams(_hparams(cfg, strategy, attack, byzantine, data.name), _final_metrics(summary))
    finally:
        writer.close()
    write_atomic(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    _print_summary(summary, run_dir)
    return summary
