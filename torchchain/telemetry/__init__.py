"""Run telemetry: TensorBoard scalars, histograms and text."""

from torchchain.telemetry.tensorboard import RunWriter

__all__ = ["RunWriter"]
