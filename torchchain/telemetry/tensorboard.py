"""TensorBoard logging with torchchain's tag names (DESIGN.md, Naming).

Tags: ``eval/accuracy``, ``eval/loss``, ``eval/rmse``, ``chain/height``, ``chain/mine_seconds``,
``chain/rejected``, ``clients/update_norm`` (histogram, and one scalar per client under
``clients/update_norm/<client label>``), ``clients/trusted/<client label>``,
``time/round_seconds``, and the run's config as text under ``config``.

The same per-round scalars also go, one JSON object a line, to ``rounds.jsonl`` beside the
events when a run asks for it: ``{"round": 3, "unix_time": ..., "eval/accuracy": ...,
"time/train": ...}`` (``unix_time`` is when the round was logged, after its evaluation), for
scripts that want a run's rounds without reading event files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

__all__ = ["RunWriter"]


class RunWriter:
    """Writes one run's TensorBoard events into ``logdir``.

    Args:
        logdir: Folder for the event files (created if missing).
        rounds_file: If given, every :meth:`scalars` call also appends one JSON line there
            (non-finite values as ``null``).
    """

    def __init__(self, logdir: str | Path, *, rounds_file: str | Path | None = None) -> None:
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(log_dir=str(self.logdir))
        self.rounds_file = None if rounds_file is None else Path(rounds_file)

    def config(self, text: str) -> None:
        """Record the run's resolved config (YAML) as text, shown in TensorBoard's Text tab."""
        # Four-space indent makes TensorBoard's markdown render it as a code block.
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log each ``tag: value`` pair at ``step`` (and as one line of :attr:`rounds_file`)."""
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)
        if self.rounds_file is not None:
            line = {"round": step, "unix_time": time.time()}
            line.update({tag: float(v) if math.isfinite(v) else None for tag, v in values.items()})
            with self.rounds_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, allow_nan=False) + "\n")

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
