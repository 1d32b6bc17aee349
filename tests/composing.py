"""Compose the project's Hydra config on tiny settings, as ``python train.py <overrides>`` would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: Overrides that keep an end-to-end run to a few seconds.
FAST = ["chain.difficulty=8", "runtime.progress=false"]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, composed without starting a job."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))
