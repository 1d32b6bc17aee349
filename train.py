"""Train a model across federated clients, every update signed and mined into a ledger.

Usage::

    python train.py                                   # 5 clients on the bundled digits data
    python train.py clients=5 attack=signflip         # one of the 5 sends sign-flipped updates
    python train.py clients=5 attack=signflip strategy=fedavg   # ... and a non-robust average
    python train.py experiment=regression             # linear regression on diabetes, eval/rmse
    python train.py -m attack=signflip,gaussian strategy=median,fedavg   # a Hydra sweep
    python train.py strategy._target_=my_pkg.MyStrategy          # your own Strategy subclass

Each run writes into its Hydra folder (``outputs/<date>/<time>/``): ``ledger/`` (verify it with
``torchchain verify``), ``tensorboard/`` events and ``summary.json``.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchchain.errors import TorchchainError
from torchchain.experiment import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        hydra_config = HydraConfig.get()
        summary = run(cfg, hydra_config.runtime.output_dir, overrides=list(hydra_config.overrides.task))
    except TorchchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary.get("final_accuracy")  # the value a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
