"""Compose the project's Hydra config on tiny settings, as ``python train.py <overrides>`` would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: Overrides that keep an end-to-end run to a few seconds.
FAST = ["chain.difficulty=8", "runtime.progress=false"]


def config_classes(group: str) -> dict[str, type]:
    """Each option of a config group (``conf/<group>/<name>.yaml``) and the class its
    ``_target_`` names: the project's registry of attacks, models and strategies is its configs."""
    import importlib

    from omegaconf import OmegaConf

    classes = {}
    for path in sorted((CONF / group).glob("*.yaml")):
        module, _, name = OmegaConf.load(path)["_target_"].rpartition(".")
        classes[path.stem] = getattr(importlib.import_module(module), name)
    return classes


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, composed without starting a job."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


class Stopped(Exception):
    """Stands in for the process dying."""


def run_stopped_before(round_: int, overrides: list[str], run_dir: Path, monkeypatch) -> None:
    """Run ``python train.py <overrides>`` into ``run_dir`` and stop it as it starts round ``round_``
    (as if the process died there), leaving the ledger with ``round_ - 1`` blocks."""
    import pytest

    from torchchain.experiment import run
    from torchchain.runtime.simulation import Simulation

    original = Simulation.run_round

    def run_round(self, round):
        if round == round_:
            raise Stopped
        return original(self, round)

    with monkeypatch.context() as patch:
        patch.setattr(Simulation, "run_round", run_round)
        with pytest.raises(Stopped):
            run(compose_config(overrides), run_dir)
