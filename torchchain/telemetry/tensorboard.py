"""TensorBoard logging with torchchain's tag names (DESIGN.md, Naming).

Tags: ``eval/accuracy``, ``eval/loss``, ``eval/rmse``, ``chain/height``, ``chain/mine_seconds``,
``chain/rejected``, ``clients/update_norm`` (histogram, and one scalar per client under
``clients/update_norm/<client label>``), ``clients/trusted/<client label>``,
``time/round_seconds``, and the run's config as text under ``config``.
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

__all__ = ["RunWriter"]


class RunWriter:
    """Writes one run's TensorBoard events into ``logdir``.

    Args:
        logdir: Folder for the event files (created if missing).
    """

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def config(self, text: str) -> None:
        """Record the run's resolved config (YAML) as text, shown in TensorBoard's Text tab."""
        # Four-space indent makes TensorBoard's markdown render it as a code block.
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log each ``tag: value`` pair at ``step``."""
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def update_norms(self, step: int, norms: Mapping[str, float]) -> None:
        """Log the L2 norm of each client's submitted update: a histogram and per-client scalars.

        Args:
            step: The round.
            norms: Norm by client label (labels tell honest and malicious clients apart).
        """
        if not norms:
            return
        # An overflowed update has an infinite norm; the histogram takes the finite ones.
        finite = [value for value in norms.values() if math.isfinite(value)]
        if finite:
            self._writer.add_histogram("clients/update_norm", torch.tensor(finite), step)
        for label, value in norms.items():
            self._writer.add_scalar(f"clients/update_norm/{label}", value, step)

    def trust(self, step: int, weights: Mapping[str, float]) -> None:
        """Log the weight the strategy gave each client (0 for rejected or excluded ones)."""
        for label, value in weights.items():
            self._writer.add_scalar(f"clients/trusted/{label}", value, step)

    def hparams(self, params: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Record the run's hyperparameters with its final metrics for TensorBoard's HParams tab."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        self._writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
