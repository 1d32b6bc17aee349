"""Record-level differential privacy inside a client's local training: DP-SGD with Opacus.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") protects each training
example of a client: every step draws a Poisson sample of the local data (each example kept
independently with probability ``q``), clips each example's gradient to L2 norm ``max_grad_norm``,
sums them, adds ``N(0, (σ·max_grad_norm)²)`` per coordinate and divides by the expected batch
size ``q·N``. Opacus computes the per-example gradients (:class:`opacus.GradSampleModule`) and
does the clipping and noising (:class:`opacus.optimizers.DPOptimizer`); this module draws the
Poisson samples with Opacus' :class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler`
and runs the loop on whole tensors, like :func:`torchchain.runtime.client.train_local`.

The caller's own module is trained in place: Opacus' ``GradSampleModule`` only wraps it (as
``_module``) and shares its parameters, and is taken off again at the end, so the caller reads
the trained weights from its own ``model.state_dict()`` under the original names.

Randomness. One client-private CPU generator drives both the Poisson samples and the noise (a
seed for the noise generator, on the training device, is drawn from it first). Both must stay
secret for the accounted guarantee: public noise can be regenerated and subtracted, and a public
sample reveals which examples a step used, which voids the amplification by sampling that the
sample rate ``q`` in the accountant stands for. Equal generator states give equal runs on the
same device and software.

Accounting: a round is ``DPSGDReport.steps`` runs of the sampled Gaussian mechanism with noise
multiplier ``DPSGDReport.noise_multiplier`` and rate ``DPSGDReport.sample_rate``; append it to
the client's :class:`~torchchain.privacy.accountant.PrivacyHistory` with
:meth:`DPSGDReport.extend`.

Momentum: the optimizer is SGD with the settings' learning rate and momentum, but its momentum
buffer starts from zero every round; buffers are not carried across rounds under DP-SGD (the
``momentum_buffers`` of ``train_local`` are neither read nor written). Momentum applies only
to already-noised gradients, so it costs no privacy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from torchchain.data import DataSplit
from torchchain.errors import ConfigError
from torchchain.privacy.accountant import MAX_NOISE_MULTIPLIER, PrivacyHistory

if TYPE_CHECKING:  # imported for annotations only: the runtime may import this module
    from torchchain.runtime.client import LocalTraining

__all__ = ["DPSGD", "DPSGDReport", "check_model", "train_local_dpsgd"]


#: Attributes Opacus sets on parameters. Opacus 1.6 removes the first four itself; 1.5 leaves
#: ``grad_sample``, and neither removes the optimizer's ``summed_grad``.
_OPACUS_PARAM_ATTRS = ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad")


def _positive(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class DPSGD:
    """Record-level DP-SGD settings.

    Attributes:
        max_grad_norm: The bound on each example's gradient norm; finite, > 0.
        noise_multiplier: ``σ`` in ``(0, 1e6]``; noise std per coordinate is ``σ·max_grad_norm``
            on the sum of clipped gradients.

    Raises:
        ConfigError: If either value is out of range.
    """

    max_grad_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not _positive(self.max_grad_norm):
            raise ConfigError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm!r}")
        if not (_positive(self.noise_multiplier) and self.noise_multiplier <= MAX_NOISE_MULTIPLIER):
            raise ConfigError(
                f"noise_multiplier must be a number in (0, {MAX_NOISE_MULTIPLIER:g}], got {self.noise_multiplier!r}"
            )
        object.__setattr__(self, "max_grad_norm", float(self.max_grad_norm))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))


@dataclass(frozen=True)
class DPSGDReport:
    """What one round of DP-SGD spent.

    Attributes:
        steps: Optimizer steps taken (each on one Poisson sample, possibly empty).
        sample_rate: ``q``, the probability that an example is in a step's sample.
        noise_multiplier: ``σ`` used at every step.
        max_grad_norm: The per-example clipping bound.
        examples_seen: The total size of all the samples (for logs; not part of accounting).
    """

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    examples_seen: int

    def extend(self, history: PrivacyHistory) -> PrivacyHistory:
        """``history`` with this round appended (one entry of ``steps`` steps at ``(σ, q)``)."""
        return history.step(self.noise_multiplier, self.sample_rate, self.steps)


def _check_settings(settings: LocalTraining, num_samples: int) -> int:
    """Validate what DP-SGD reads from ``settings`` and return the number of steps."""
    if num_samples < 1:
        raise ConfigError("DP-SGD needs at least one local example; this client holds none")
    if isinstance(settings.batch_size, bool) or not isinstance(settings.batch_size, int) or settings.batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")
    if not _positive(settings.lr):
        raise ConfigError(f"lr must be a finite number > 0, got {settings.lr!r}")
    m = settings.momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not (0 <= m < 1):
        raise ConfigError(f"momentum must be a number in [0, 1), got {m!r}")
    if settings.task not in ("classification", "regression"):
        raise ConfigError(f"task must be 'classification' or 'regression', got {settings.task!r}")
    if settings.steps is not None:
        if isinstance(settings.steps, bool) or not isinstance(settings.steps, int) or settings.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1 or None, got {settings.steps!r}")
        return settings.steps
    if isinstance(settings.epochs, bool) or not isinstance(settings.epochs, int) or settings.epochs < 1:
        raise ConfigError(f"local_epochs must be an integer >= 1 when steps is not set, got {settings.epochs!r}")
    return settings.epochs * math.ceil(num_samples / settings.batch_size)


def check_model(model: nn.Module) -> None:
    """Raise :class:`~torchchain.errors.ConfigError`, with Opacus' own reasons, when DP-SGD cannot train ``model``."""
    from opacus import GradSampleModule  # imported on use: opacus takes seconds to import
    from opacus.validators import ModuleValidator

    errors = list(ModuleValidator.validate(model, strict=False))
    errors += GradSampleModule.validate(model, strict=False)  # trainable layers holding buffers
    if errors:
        listed = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        raise ConfigError(
            f"Opacus cannot train this model with DP-SGD: {listed}. Use a model without BatchNorm "
            "(GroupNorm or LayerNorm instead), or convert it with opacus.validators.ModuleValidator.fix(model) "
            "before loading the global weights"
        )


def _summed_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each example's loss (the same per-example loss as ``train_local``)."""
    if task == "regression":
        return F.mse_loss(output, target, reduction="none").reshape(output.shape[0], -1).mean(dim=1).sum()
    return F.cross_entropy(output, target, reduction="sum")


def train_local_dpsgd(
    model: nn.Module,
    data: DataSplit,
    settings: LocalTraining,
    dp: DPSGD,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> DPSGDReport:
    """Train ``model`` in place with DP-SGD on ``data`` for one round.

    Steps: ``settings.steps`` when set, else ``settings.epochs * ceil(N / batch_size)``; each step
    uses a fresh Poisson sample with rate ``q = min(1, batch_size / N)`` (its size varies and may
    be zero, in which case the step applies noise only). Gradients are averaged over the expected
    sample size ``q·N``, the loss per example is the one ``train_local`` uses (cross-entropy, or
    mean squared error over the outputs), and the update rule is SGD with ``settings.lr`` and
    ``settings.momentum`` (momentum restarts every round).

    Args:
        model: The model, holding the global weights, on ``device``, trained in place; its
            parameter names and module structure are unchanged afterwards, and its gradients
            are cleared.
        data: The client's private data (on CPU; moved to ``device`` here).
        settings: Epochs or steps, batch size, learning rate, momentum, loss.
        dp: Clipping bound and noise multiplier.
        device: Where to train.
        generator: A CPU generator private to the client; it drives the Poisson samples and
            seeds the noise. Never one seeded from public values.

    Returns:
        A :class:`DPSGDReport` with the steps, sample rate and noise multiplier to account.

    Raises:
        ConfigError: If a setting is out of range, the client holds no data, or Opacus cannot
            compute per-example gradients for ``model`` (e.g. it contains BatchNorm).
        TypeError: If ``generator`` is not a CPU generator.
    """
    if not isinstance(dp, DPSGD):
        raise TypeError(f"dp must be a DPSGD, got {type(dp).__name__}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("train_local_dpsgd needs a CPU torch.Generator private to the client")
    num_samples = len(data)
    steps = _check_settings(settings, num_samples)
    sample_rate = min(1.0, settings.batch_size / num_samples)
    model.train()
    check_model(model)
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")

    device = torch.device(device)
    noise_seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, dtype=torch.int64))
    noise_generator = torch.Generator(device=device).manual_seed(noise_seed)
    sampler = UniformWithReplacementSampler(
        num_samples=num_samples, sample_rate=sample_rate, generator=generator, steps=steps
    )
    features = data.features.to(device)
    targets = data.targets.to(device)

    # Per-example gradients of a summed loss; the optimizer averages by the expected size q·N.
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    try:
        optimizer = DPOptimizer(
            torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum),
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=sample_rate * num_samples,
            loss_reduction="mean",
            generator=noise_generator,
        )
        seen = 0
        with warnings.catch_warnings():
            # An empty Poisson sample, or a first layer whose input needs no gradient, makes
            # torch note that a full backward hook fires on outputs only; that is expected here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for batch in sampler:
                idx = torch.as_tensor(batch, dtype=torch.long).to(device)
                seen += int(idx.numel())
                optimizer.zero_grad(set_to_none=True)
                loss = _summed_loss(settings.task, wrapped(features[idx]), targets[idx])
                loss.backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        wrapped.to_standard_module()  # removes Opacus' hooks and (some of) its per-sample attributes
        for p in model.parameters():
            for attr in _OPACUS_PARAM_ATTRS:  # what the installed version may have left behind
                if hasattr(p, attr):
                    delattr(p, attr)
        model.zero_grad(set_to_none=True)
    return DPSGDReport(
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        examples_seen=seen,
    )
