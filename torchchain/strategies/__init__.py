"""Aggregation strategies: how one round's client updates become one update.

Every rule is a :class:`Strategy`; pre-aggregation steps (:class:`PreAggregator`) compose with
any of them (``Krum(pre=["nnm"])``). The math lives in :mod:`torchchain.strategies.kernels` as
pure functions. Config names map to classes in :data:`STRATEGIES` and :data:`PRE_AGGREGATORS`.
"""

from __future__ import annotations

from torchchain.strategies.base import Aggregate, PreAggregator, Strategy
from torchchain.strategies.bucketing import Bucketing
from torchchain.strategies.bulyan import Bulyan
from torchchain.strategies.centered_clipping import CenteredClipping
from torchchain.strategies.clipping import Clipping
from torchchain.strategies.fedavg import FedAvg
from torchchain.strategies.fltrust import FLTrust
from torchchain.strategies.geomed import GeoMed
from torchchain.strategies.krum import Krum
from torchchain.strategies.lnearest import LNearest
from torchchain.strategies.median import Median
from torchchain.strategies.multikrum import MultiKrum
from torchchain.strategies.nnm import NearestNeighborMixing
from torchchain.strategies.trimmed_mean import TrimmedMean

__all__ = [
    "Aggregate",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "Clipping",
    "FLTrust",
    "FedAvg",
    "GeoMed",
    "Krum",
    "LNearest",
    "Median",
    "MultiKrum",
    "NearestNeighborMixing",
    "PRE_AGGREGATORS",
    "PreAggregator",
    "STRATEGIES",
    "Strategy",
    "TrimmedMean",
]

#: Config name -> strategy class (``strategy: krum`` in a config selects ``Krum``).
STRATEGIES: dict[str, type[Strategy]] = {
    "bulyan": Bulyan,
    "centered_clipping": CenteredClipping,
    "fedavg": FedAvg,
    "fltrust": FLTrust,
    "geomed": GeoMed,
    "krum": Krum,
    "lnearest": LNearest,
    "median": Median,
    "multikrum": MultiKrum,
    "trimmed_mean": TrimmedMean,
}

#: Config name -> pre-aggregation step (``pre: [nnm]``).
PRE_AGGREGATORS: dict[str, type[PreAggregator]] = {
    "bucketing": Bucketing,
    "clipping": Clipping,
    "nnm": NearestNeighborMixing,
}
