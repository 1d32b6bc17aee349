"""Building the recorded strategy without running anything the ledger names.

The genesis config says which strategy a chain aggregates with. That config may come from an
enemy, so it is never handed to Hydra (whose interpolations and nested ``_target_`` entries can build
arbitrary objects) and nothing it names is imported unless it is on an allow-list:

* the built-in rules (:data:`torchchain.strategies.STRATEGIES`) and pre-aggregation steps
  (:data:`torchchain.strategies.PRE_AGGREGATORS`), by their import paths;
* a class the *user* names as trusted (``torchchain audit --trust my_pkg.MyStrategy``, or the
  ``strategy._target_`` of the user's own training config).

Arguments must be plain JSON values; strings that look like interpolations (``${...}``) and
Hydra's own keys (``_convert_``, ``_partial_``, ...) are refused. Each class checks the types and
bounds of its own arguments when it is built. The same builder is used by the training run, the
validating peers and the auditor, so all of them run the same rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from torchchain.errors import ConfigError, TorchchainError
from torchchain.strategies import PRE_AGGREGATORS, STRATEGIES, PreAggregator, Strategy

__all__ = ["MAX_CONFIG_NODES", "build_codec", "build_strategy", "builtin_strategy_targets"]

#: The most values a strategy's config may hold (arguments, list items, nested entries).
MAX_CONFIG_NODES = 1_000
_MAX_STRING = 1_000


def _paths(cls: type) -> set[str]:
    # The short path the shipped configs use, and the defining module's path.
    package = cls.__module__.rsplit(".", 1)[0]
    return {f"{package}.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"}


def builtin_strategy_targets() -> dict[str, type[Strategy]]:
    """Every ``_target_`` that names a built-in strategy, mapped to its class."""
    return {path: cls for cls in STRATEGIES.values() for path in _paths(cls)}


def _builtin_pre_targets() -> dict[str, type[PreAggregator]]:
    return {path: cls for cls in PRE_AGGREGATORS.values() for path in _paths(cls)}


def _import_trusted(target: str, base: type, where: str = "strategy") -> type:
    """Import a class the user trusts; it must subclass ``base``."""
    module_name, _, attribute = target.rpartition(".")
    if not module_name or not all(part.isidentifier() for part in target.split(".")):
        raise ConfigError(f"{where}._target_={target!r} is not a dotted import path such as 'my_pkg.MyStrategy'")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}._target_={target!r} cannot be imported: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(f"{where}._target_={target!r} is not a {base.__module__}.{base.__name__} subclass")
    return obj


def _plain(value: Any, where: str, budget: list[int]) -> Any:
    """Check that ``value`` is plain JSON data with no interpolation; return it unchanged."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"the strategy config holds more than {MAX_CONFIG_NODES} values")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise ConfigError(f"{where} is a string of {len(value)} characters, over the limit of {_MAX_STRING}")
        if "${" in value:
            raise ConfigError(f"{where}={value[:60]!r} is an interpolation; recorded configs hold plain values only")
        return value
    if isinstance(value, list):
        return [_plain(item, f"{where}[{i}]", budget) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        if "_target_" in value:
            raise ConfigError(f"{where} names a _target_; only the strategy and its pre steps may")
        return {str(k): _plain(v, f"{where}.{k}", budget) for k, v in value.items()}
    raise ConfigError(f"{where} must be plain JSON data, got {type(value).__name__}")


def _arguments(node: Mapping[str, Any], where: str, budget: list[int], *, pre: bool = False) -> dict[str, Any]:
    """The plain keyword arguments of a config node; ``pre`` is left to the caller when ``pre`` is true."""
    kwargs = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            raise ConfigError(f"{where} has the key {str(key)[:40]!r}; arguments are plain identifiers")
        if key == "pre" and pre:
            continue
        kwargs[key] = _plain(value, f"{where}.{key}", budget)
    return kwargs


def _build(cls: type, kwargs: Mapping[str, Any], where: str) -> Any:
    try:
        return cls(**kwargs)
    except TorchchainError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} ({cls.__name__}) refuses its arguments: {exc}") from None


def _pre_steps(raw: Any, trusted: frozenset[str], budget: list[int]) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("strategy.pre must be a list of step names or step configs")
    builtin = _builtin_pre_targets()
    steps: list[Any] = []
    for i, step in enumerate(raw):
        where = f"strategy.pre[{i}]"
        budget[0] -= 1
        if isinstance(step, str):
            if step not in PRE_AGGREGATORS:
                raise ConfigError(f"{where}: pre-aggregation step {step[:40]!r} is unknown; use one of {sorted(PRE_AGGREGATORS)}")
            steps.append(step)
        elif isinstance(step, Mapping) and isinstance(step.get("_target_"), str):
            target = step["_target_"]
            cls = builtin.get(target) or (_import_trusted(target, PreAggregator, where) if target in trusted else None)
            if cls is None:
                raise ConfigError(f"{where} names {target[:80]!r}, which is not a built-in pre-aggregation step")
            steps.append(_build(cls, _arguments(step, where, budget), where))
        else:
            raise ConfigError(f"{where} must be a step name or a config with a _target_")
    return steps


def build_strategy(
    node: Mapping[str, Any], *, num_clients: int, num_byzantine: int, trusted: Iterable[str] = ()
) -> Strategy:
    """Build and set up the strategy a config node describes, importing nothing off the allow-list.

    Args:
        node: ``{"_target_": "torchchain.strategies.Krum", "f": null, "pre": ["bucketing"], ...}``.
        num_clients: The run's client count, for :meth:`Strategy.setup`.
        num_byzantine: The run's Byzantine count, for :meth:`Strategy.setup`.
        trusted: Import paths of user classes (strategies or steps) that may be imported.

    Raises:
        ConfigError: The node is malformed, names a class that is neither built in nor trusted,
            holds anything but plain values, or the class refuses its arguments or the
            client counts. Nothing named by the node has been imported or called then,
            except trusted classes.
    """
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        raise ConfigError("the strategy config must be an object with a '_target_' naming the class")
    target = node["_target_"]
    trusted = frozenset(trusted)
    budget = [MAX_CONFIG_NODES]
    cls = builtin_strategy_targets().get(target)
    if cls is None:
        if target not in trusted:
            raise ConfigError(
                f"the strategy {target[:120]!r} is not built in, so it is not imported; if you trust that code, "
                f"name it explicitly (torchchain audit --trust {target[:120]})"
            )
        cls = _import_trusted(target, Strategy)
    kwargs = _arguments(node, "strategy", budget, pre=True)
    if "pre" in node:
        kwargs["pre"] = _pre_steps(node["pre"], trusted, budget)
    strategy = _build(cls, kwargs, "strategy")
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"strategy {target!r} did not build a Strategy")
    strategy.setup(num_clients=num_clients, num_byzantine=num_byzantine)
    return strategy


def build_codec(node: Mapping[str, Any] | None) -> Any:
    """Build the update codec a protocol config names (built-in codecs only; ``None``: no codec).

    Args:
        node: ``{"_target_": "torchchain.updates.codecs.RotateQuantize", "bits": 8}`` or ``None``.

    Raises:
        ConfigError: The node names anything but a built-in codec, holds anything but plain
            values, or the codec refuses its arguments.
    """
    from torchchain.updates.codecs import CODECS, NoCodec

    if node is None:
        return NoCodec()
    if not isinstance(node, Mapping) or not isinstance(node.get("_target_"), str):
        raise ConfigError("the codec config must be an object with a '_target_' naming a built-in codec")
    allowed = {path: cls for cls in CODECS.values() for path in _paths(cls)}
    target = node["_target_"]
    if target not in allowed:
        raise ConfigError(f"codec._target_={target[:120]!r} is not one of the built-in codecs {sorted(CODECS)}")
    return _build(allowed[target], _arguments(node, "codec", [MAX_CONFIG_NODES]), "codec")
