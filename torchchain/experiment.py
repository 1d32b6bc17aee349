"""From a composed config to a finished run: validate, build the objects, run, summarize.

This is the one module that reads the config tree; the runtime below it takes plain objects.
``train.py`` calls :func:`run` with the config Hydra composed; tests call it with a config
from Hydra's Compose API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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
from torchchain.runtime.client import LocalTraining
from torchchain.runtime.simulation import Simulation, SimulationSettings
from torchchain.strategies.base import Strategy
from torchchain.telemetry import RunWriter

__all__ = ["DEFAULT_BYZANTINE_FRACTION", "resolve_byzantine", "resolve_device", "run"]

#: Share of clients that are malicious when an attack is set and ``byzantine`` is not.
DEFAULT_BYZANTINE_FRACTION = 0.2

# Keys that say where or how to show a run, not what it computes: left out of the genesis config.
_NOT_RECORDED = ("resume", "runtime")


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


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
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


def _settings(cfg: DictConfig, *, byzantine: int, device: torch.device, task: str) -> SimulationSettings:
    clients = _positive_int(cfg, "clients")
    lr = cfg.lr
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    momentum = float(cfg.get("momentum", 0.0))
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"momentum must lie in [0, 1), got {momentum}")
    steps = cfg.get("local_steps")
    if steps is not None:
        steps = _positive_int(cfg, "local_steps")
    difficulty = cfg.chain.difficulty
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not 0 <= difficulty <= 40:
        raise ConfigError(f"chain.difficulty is in leading zero bits and must be an integer in [0, 40], got {difficulty!r}")
    kind = cfg.partition.kind
    if kind not in ("iid", "dirichlet", "shards"):
        raise ConfigError(f"partition.kind must be one of iid, dirichlet, shards; got {kind!r}")
    return SimulationSettings(
        clients=clients,
        rounds=_positive_int(cfg, "rounds"),
        byzantine=byzantine,
        seed=int(cfg.seed),
        device=device,
        training=LocalTraining(
            epochs=_positive_int(cfg, "local_epochs"),
            steps=steps,
            batch_size=_positive_int(cfg, "batch_size"),
            lr=float(lr),
            momentum=momentum,
            task=task,
        ),
        partition=kind,
        alpha=float(cfg.partition.alpha),
        shards_per_client=int(cfg.partition.shards_per_client),
        difficulty=difficulty,
        max_update_bytes=int(float(cfg.chain.max_update_mb) * (1 << 20)),
        eval_every=_positive_int(cfg, "runtime.eval_every"),
        progress=bool(cfg.runtime.progress),
    )


def _recorded_config(cfg: DictConfig, *, byzantine: int) -> dict[str, Any]:
    """The part of the config that determines the computation, as plain JSON for the genesis block.

    ``byzantine`` is recorded as the resolved count, so an auditor needs no defaults to know it.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    recorded = {k: v for k, v in container.items() if k not in _NOT_RECORDED}
    recorded["byzantine"] = byzantine
    json.dumps(recorded, allow_nan=False)  # fail here, not inside the ledger, on a non-JSON value
    return recorded


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


def _resume_config(run_dir: Path) -> DictConfig:
    """The config a run folder was started with (its ``config.yaml``)."""
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it holds no config.yaml; give the folder of a torchchain run")
    return OmegaConf.load(stored)


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
    print(f"torchchain: {run_dir} already finished all {rounds} rounds (ledger height {ledger.height}); nothing to do")
    return json.loads(summary_file.read_text())


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate ``cfg``, train, and write ``summary.json`` into ``run_dir``.

    Everything that can be checked without data is checked first, so a bad value fails in a
    second with a :class:`~torchchain.errors.ConfigError` that says what to change.

    With ``resume=<run folder>`` the run in that folder continues from its last whole block with
    the config it was started with (its ``config.yaml``); ``run_dir`` is then not used.

    Returns:
        The summary (final metrics, rounds, blocks, rejected updates, ledger path, timings).
    """
    resuming = cfg.get("resume") is not None
    if resuming:
        run_dir = Path(str(cfg.resume))
        cfg = _resume_config(run_dir)
        done = _finished_summary(run_dir, _positive_int(cfg, "rounds"))
        if done is not None:
            return done
        print(f"torchchain: resuming {run_dir}")
    run_dir = Path(run_dir)
    clients = _positive_int(cfg, "clients")
    device = resolve_device(str(cfg.device))
    strategy = _instantiate(cfg.strategy, "strategy", Strategy)
    attack = _instantiate(cfg.attack, "attack", Attack)
    byzantine = resolve_byzantine(cfg.byzantine, clients, attack_set=not isinstance(attack, NoAttack))
    strategy.setup(num_clients=clients, num_byzantine=byzantine)
    attack.setup(num_clients=clients, num_byzantine=byzantine)

    torch.manual_seed(int(cfg.seed))  # the initial model: the one draw that uses the global stream
    data = _instantiate(cfg.dataset, "dataset", TaskData)
    settings = _settings(cfg, byzantine=byzantine, device=device, task=data.task)
    if settings.clients > len(data.train):
        raise ConfigError(f"clients={clients} exceeds the {len(data.train)} training samples of {data.name}")
    model = _instantiate(
        cfg.model, "model", torch.nn.Module, input_shape=list(data.input_shape), num_outputs=data.num_outputs
    )

    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    writer = RunWriter(run_dir / "tensorboard")
    writer.config(OmegaConf.to_yaml(cfg))
    try:
        sim = Simulation(
            data=data,
            model=model,
            strategy=strategy,
            attack=attack,
            settings=settings,
            run_dir=run_dir,
            config=_recorded_config(cfg, byzantine=byzantine),
            writer=writer,
            resume=resuming,
        )
        summary = sim.run()
        writer.hparams(_hparams(cfg, strategy, attack, byzantine, data.name), _final_metrics(summary))
    finally:
        writer.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, run_dir)
    return summary
