"""N clients and one mining node in a single process: the whole protocol, round by round.

Each round: every client loads the head block's global model (fetched from the ledger by its
hash), trains on its private data and computes its delta; malicious clients apply the attack
before signing, as a real attacker would; every update is serialized, hashed and signed; the
node validates, aggregates, mines and appends the block; the new model is evaluated on the
held-out test split and everything is logged.

With ``privacy=secagg`` the sampled clients first run the secure-aggregation protocol with the
node (:mod:`torchchain.runtime.secure`): keys, shares, then each surviving client masks its
(possibly poisoned) update and signs the masked input instead of its update; the node unmasks
only the sum. Attacks still act on a malicious client's own update before it is masked; an
omniscient attack is handed the honest clients' plaintext updates by this simulation, which a
real attacker under secure aggregation would not see.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from torchchain.attacks.base import Attack
from torchchain.chain.block import Transaction, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger
from torchchain.data import DataSplit, TaskData
from torchchain.data.partition import partition
from torchchain.errors import ConfigError
from torchchain.privacy.dpsgd import check_model, train_local_dpsgd
from torchchain.protocol.privacy import split_state
from torchchain.protocol.record import RoundRecord
from torchchain.protocol.round import RoundRules
from torchchain.protocol.secure_round import SECAGG_CODEC
from torchchain.protocol.submission import Submission
from torchchain.runtime.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from torchchain.runtime.client import Client, LocalTraining, evaluate, train_local
from torchchain.runtime.client_state import ClientStates
from torchchain.runtime.executor import LocalExecutor
from torchchain.runtime.local_privacy import LocalPrivacy
from torchchain.runtime.node import Node, PreparedBlock
from torchchain.runtime.poisoning import poison_updates, tamper_hook
from torchchain.runtime.secure import SecureClient, SecureRound
from torchchain.runtime.seeding import client_key, derive_generator
from torchchain.telemetry import RunWriter
from torchchain.updates.delta import compute_delta, flatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = ["Simulation", "SimulationSettings", "derive_generator"]


@dataclass(frozen=True)
class SimulationSettings:
    """Everything about a run that is not an object: sizes, seeds, training and chain settings.

    Attributes:
        clients: Number of clients ``n``.
        rounds: Number of federated rounds (one block each).
        byzantine: Number of malicious clients ``f`` (already resolved from a count or fraction).
        seed: The one seed every random stream derives from.
        device: Where clients train and the model is evaluated (aggregation is always on CPU).
        training: Local training settings.
        partition: ``"iid"``, ``"dirichlet"`` or ``"shards"``.
        alpha: Dirichlet concentration (``partition="dirichlet"``).
        shards_per_client: Label shards per client (``partition="shards"``).
        difficulty: Proof-of-work difficulty in leading zero bits.
        eval_every: Evaluate the global model every this many rounds (and always at the last).
        progress: Show a progress bar.
        executor: How a round's clients train: ``"auto"``, ``"sequential"``, ``"batched"`` or
            ``"processes"`` (:mod:`torchchain.runtime.executor`); a local setting, not part of
            the protocol.
        batch_clients: Most clients the batched executor trains in one vmapped chunk.
        workers: Worker processes of the processes executor (``None``: one per usable core).
        model_factory: Builds the model's architecture in a worker process of the processes
            executor (picklable; ``None``: that executor is unavailable).
        mine_workers: Processes that split the proof-of-work nonce search (the block found is
            the same for any count).
        privacy: The clients' privacy mechanism and their private noise seed
            (:mod:`torchchain.runtime.local_privacy`).
    """

    clients: int
    rounds: int
    byzantine: int
    seed: int
    device: torch.device
    training: LocalTraining
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    difficulty: int = 16
    eval_every: int = 1
    progress: bool = True
    executor: str = "auto"
    batch_clients: int = 64  # torchchain.runtime.executor.DEFAULT_BATCH_CLIENTS
    workers: int | None = None
    model_factory: Callable[[], nn.Module] | None = None
    mine_workers: int = 1
    privacy: LocalPrivacy = field(default_factory=LocalPrivacy)


class Simulation:
    """Runs the protocol for ``settings.clients`` clients and one node in this process.

    The strategy is not passed in: it is built from the genesis block's config by the
    protocol (:meth:`RoundRules.from_genesis`), exactly as a validator or ``torchchain audit``
    builds it.

    Args:
        data: The task's train and test splits.
        model: The model; its initial weights are the genesis model.
        attack: What the malicious clients do (``setup`` is called here).
        settings: Sizes, seeds, training and chain settings.
        run_dir: Folder for the ledger (``ledger/``) and TensorBoard events (``tensorboard/``).
        config: The protocol config, recorded in the genesis block so every node and auditor
            knows exactly what ran; it must be JSON-serializable and hold ``strategy``,
            ``clients``, ``byzantine`` and ``chain.max_update_mb``.
        writer: TensorBoard writer, or ``None`` for no events.
        resume: Continue the run whose ledger is in ``run_dir`` from its last whole block: the
            round state comes from the chain, the attack and client state from the checkpoint
            keyed by the head block's hash. A folder without a genesis block starts afresh.
        trusted: Import paths of user strategy classes the config may name.

    Raises:
        ConfigError: if ``resume`` finds a ledger made with another config, or no checkpoint
            for its last block.
    """

    def __init__(
        self,
        *,
        data: TaskData,
        model: nn.Module,
        attack: Attack,
        settings: SimulationSettings,
        run_dir: str | Path,
        config: Mapping[str, Any],
        writer: RunWriter | None = None,
        resume: bool = False,
        trusted: tuple[str, ...] = (),
    ) -> None:
        self.data = data
        self.settings = settings
        self.model = model.to(settings.device)
        self.attack = attack
        self.run_dir = Path(run_dir)
        self.writer = writer
        n, f = settings.clients, settings.byzantine
        attack.setup(num_clients=n, num_byzantine=f)
        keys = [client_key(settings.seed, i) for i in range(n)]

        self.global_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.checkpoints = self.run_dir / "checkpoints"
        # Each client's momentum and codec residual, on disk between the rounds it trains in.
        self.client_states = ClientStates(self.checkpoints / "clients")
        node_key = SigningKey.from_seed_material(f"torchchain/node/0/seed={settings.seed}")
        ledger_dir = self.run_dir / "ledger"
        resuming = resume and any((ledger_dir / "blocks").glob("*.json"))
        # The same rules every validator builds from the genesis block, built before anything is written.
        self.rules = RoundRules.from_config(config, [k.public_key for k in keys], trusted=trusted)
        strategy = self.strategy = self.rules.strategy
        self.root, root_pool = self._root_set(data, strategy)
        pool = root_pool
        parts = [
            pool[idx]
            for idx in partition(
                settings.partition,
                data.train.targets[pool],
                n,
                seed=settings.seed,
                alpha=settings.alpha,
                shards_per_client=settings.shards_per_client,
            )
        ]
        malicious = set(torch.randperm(n, generator=derive_generator(settings.seed, "byzantine"))[:f].tolist())
        self.clients: list[Client] = []
        for i, idx in enumerate(parts):
            split = data.train.subset(idx)
            if i in malicious:
                x, y = attack.poison_data(
                    split.features,
                    split.targets,
                    num_classes=data.num_classes,
                    generator=derive_generator(settings.seed, "poison_data", i),
                )
                split = DataSplit(features=x, targets=y)
            self.clients.append(Client(index=i, key=keys[i], data=split, byzantine=i in malicious, momentum_buffers={}))
        self._check_privacy_plan()
        if settings.privacy.kind == "dpsgd":
            check_model(self.model)
        if resuming:
            self.ledger = Ledger.open_writer(ledger_dir)
        else:
            model_bytes = update_to_bytes(self.global_state)
            genesis = make_genesis(
                members=[k.public_key for k in keys],
                config=dict(config),
                model_hash=sha256_hex(model_bytes),
                miner=node_key,
                difficulty=settings.difficulty,
                time_ms=int(time.time() * 1000),
                workers=settings.mine_workers,
            )
            self.ledger = Ledger.create(ledger_dir, genesis, blobs=[model_bytes])
        if resuming:
            self._restore(config)
        self.node = Node(
            ledger=self.ledger, rules=self.rules, key=node_key, difficulty=settings.difficulty,
            mine_workers=settings.mine_workers,
        )
        # How clients train is local: it changes speed and the last bits of updates, not the protocol.
        self.executor = LocalExecutor(
            settings.executor, batch_clients=settings.batch_clients, workers=settings.workers,
            model_factory=settings.model_factory, client_data={c.index: c.data for c in self.clients},
        )
        self._labels = {c.public_key: c.label for c in self.clients}

    def _check_privacy_plan(self) -> None:
        """Refuse a run whose planned rounds would pass ``privacy.target_epsilon``, before anything is written.

        A client takes part in every round, or, with ``clients_per_round``, in the expected
        share of them (rounded up); a run that samples one client more often than that stops
        before the round that would pass the budget (:meth:`run`).
        """
        rules, rounds = self.rules.privacy, self.settings.rounds
        if rules.target_epsilon is None:
            return
        per_round = self.rules.clients_per_round
        releases = rounds if per_round is None else math.ceil(rounds * per_round / len(self.clients))
        planned = rules.planned_epsilon([len(c.data) for c in self.clients], releases)
        if rules.over_budget(planned):
            raise ConfigError(
                f"privacy.target_epsilon={rules.target_epsilon:g}: the planned {rounds} rounds would spend up to "
                f"epsilon={planned:.3g} at delta={rules.delta:g} ({releases} updates per client, "
                f"noise_multiplier={rules.noise_multiplier:g}); lower rounds, raise privacy.noise_multiplier, "
                "or raise privacy.target_epsilon"
            )

    def _epsilon_past_budget(self, round: int) -> float | None:
        """The ε round ``round`` would reach if every client it samples is accepted, when that
        passes ``privacy.target_epsilon``; ``None`` when the round fits (or nothing is accounted)."""
        rules = self.rules.privacy
        if not rules.accounts or rules.target_epsilon is None:
            return None
        sample = self.rules.sample(round)
        _, spent = split_state(self.node.round_state)
        epsilon = rules.epsilon(rules.spend(spent, [(c.public_key, len(c.data)) for c in self.clients if c.public_key in sample]))
        return epsilon if rules.over_budget(epsilon) else None

    @property
    def epsilon(self) -> float | None:
        """The largest privacy loss of any client so far, as the head block records it."""
        if not self.rules.privacy.accounts:
            return None
        return self.rules.privacy.epsilon(split_state(self.node.round_state)[1])

    def close(self) -> None:
        """Stop the training workers, if any run, and release the ledger's writer lock."""
        try:
            self.executor.close()
        finally:
            self.ledger.close()

    def _root_set(self, data: TaskData, strategy: Any) -> tuple[DataSplit | None, torch.Tensor]:
        """FLTrust-like strategies: the node's small clean root set, cut before partitioning.

        Returns the root set (``None`` when the strategy needs none) and the indices left for the clients.
        """
        n = self.settings.clients
        if not strategy.requires_reference:
            return None, torch.arange(len(data.train))
        root_samples = int(strategy.root_samples)  # FLTrust's argument
        if not 0 < root_samples < len(data.train) - n:
            raise ConfigError(
                f"strategy.root_samples={root_samples} must lie between 1 and {len(data.train) - n - 1} "
                f"(the {len(data.train)} training samples minus one per client)"
            )
        pool = torch.randperm(len(data.train), generator=derive_generator(self.settings.seed, "root"))
        return data.train.subset(pool[:root_samples].sort().values), pool[root_samples:].sort().values

    def _restore(self, config: Mapping[str, Any]) -> None:
        """Take up an existing ledger: check it is this run's, load its head model and the checkpoint."""
        if self.ledger.config != json.loads(json.dumps(dict(config))):
            raise ConfigError(
                f"cannot resume {self.run_dir}: its ledger was made with a different config; "
                "resume with the run's own config.yaml, or start a new run"
            )
        if tuple(sorted(c.public_key for c in self.clients)) != tuple(sorted(self.ledger.members)):
            raise ConfigError(f"cannot resume {self.run_dir}: the ledger's members are not this run's clients")
        head = self.ledger.head
        blob = self.ledger.get_blob(head.header.model_hash)
        self.global_state = update_from_bytes(blob, max_bytes=len(blob))
        if self.ledger.height == 0:
            return
        # The round state is in the chain (the node loads it from the head); the checkpoint
        # holds only what is private to this process: the attack's and the clients' state.
        state = load_checkpoint(checkpoint_path(self.checkpoints, head.hash))
        self.attack.load_state_dict(state["attack"])
        self.client_states.load_manifest(state["clients"], clients={c.index for c in self.clients})

    @property
    def finished(self) -> bool:
        """Whether the ledger already holds a block for every round."""
        return self.ledger.height >= self.settings.rounds

    # -- one round -------------------------------------------------------------------------

    def _train_delta(
        self, data: DataSplit, generator: torch.Generator, momentum_buffers: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Train a copy of the global model on ``data``; return the delta against the global model."""
        self.model.load_state_dict(self.global_state)
        train_local(
            self.model,
            data,
            self.settings.training,
            device=self.settings.device,
            generator=generator,
            momentum_buffers=momentum_buffers,
        )
        return compute_delta(self.model.state_dict(), self.global_state)

    def _local_updates(
        self, round: int, clients: list[Client], seconds: dict[str, float]
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Each of ``clients`` trains from the global model; returns each one's honest delta."""
        start = time.perf_counter()
        self.client_states.checkout(clients)
        privacy = self.settings.privacy
        if privacy.kind == "dpsgd":
            deltas = {c.index: self._train_delta_dpsgd(c, round) for c in clients}
        else:
            updates = self.executor.train(
                self.model, self.global_state, [c.data for c in clients], self.settings.training,
                device=self.settings.device,
                generators=[derive_generator(self.settings.seed, "train", round, c.index) for c in clients],
                momentum_buffers=[c.momentum_buffers for c in clients], clients=[c.index for c in clients],
            )
            deltas = {c.index: delta for c, delta in zip(clients, updates)}
        seconds["train"] = time.perf_counter() - start
        if privacy.client_dp is not None:
            start = time.perf_counter()
            for c in clients:
                noise = derive_generator(privacy.noise_seed, "client_dp", round, c.index)
                deltas[c.index], _ = privacy.client_dp.apply(deltas[c.index], generator=noise)
            seconds["privacy"] = time.perf_counter() - start
        return deltas

    def _train_delta_dpsgd(self, client: Client, round: int) -> dict[str, torch.Tensor]:
        """Train a copy of the global model with DP-SGD on ``client``'s data; return the delta.

        Poisson sampling and noise come from a generator derived from the local
        ``privacy.noise_seed``, never from the run's public seed.
        """
        self.model.load_state_dict(self.global_state)
        train_local_dpsgd(
            self.model, client.data, self.settings.training, self.settings.privacy.dpsgd,
            device=self.settings.device,
            generator=derive_generator(self.settings.privacy.noise_seed, "dpsgd", round, client.index),
        )
        return compute_delta(self.model.state_dict(), self.global_state)

    def _forged_submissions(
        self, round: int, base_hash: str, deltas: Mapping[int, Mapping[str, torch.Tensor]]
    ) -> list[Submission]:
        """What the malicious clients send under an attack on the chain itself: the attack
        decides (:meth:`Attack.forge`); this runtime only lends it a :class:`_ChainForger`."""
        malicious = [(c.index, deltas[c.index]) for c in self.clients if c.byzantine and c.index in deltas]
        forger = _ChainForger(self.ledger, seed=self.settings.seed, round=round, base_hash=base_hash)
        forged = self.attack.forge(malicious=malicious, forger=forger)
        for item in forged:
            if not isinstance(item, Submission):
                raise TypeError(f"{type(self.attack).__name__}.forge must return what its Forger made, got {type(item).__name__}")
        return forged

    def _poison(self, round: int, deltas: dict[int, dict[str, torch.Tensor]], seconds: dict[str, float]) -> None:
        """Malicious clients replace their delta with the attack's output, before signing."""
        if self.attack.forges_transactions:
            return
        start = time.perf_counter()
        poison_updates(
            self.attack, clients=[c for c in self.clients if c.index in deltas], deltas=deltas, rules=self.rules,
            round_state=self.node.round_state, seed=self.settings.seed, round=round,
        )
        seconds["attack"] = time.perf_counter() - start

    def _tamper(self, round: int, index: int) -> Callable[[bytes], bytes]:
        return tamper_hook(self.attack, seed=self.settings.seed, round=round, index=index)

    def _dropouts(self, round: int, sampled: list[Client]) -> set[str]:
        """The sampled clients that drop out of a secagg round after dealing shares (``privacy.dropout``)."""
        count = math.floor(self.settings.privacy.dropout * len(sampled) + 1e-9)
        order = torch.randperm(len(sampled), generator=derive_generator(self.settings.seed, "dropout", round))
        return {sampled[i].public_key for i in order[:count].tolist()}

    def _secure_submissions(
        self, round: int, base_hash: str, sample: frozenset[str], sampled: list[Client],
        deltas: Mapping[int, Mapping[str, torch.Tensor]], seconds: dict[str, float],
    ) -> tuple[list[Submission], SecureRound]:
        """Run the secure-aggregation protocol up to the masked inputs; return them (signed) and
        the node's side of the round, which gathers the reveals when the node asks."""
        start = time.perf_counter()
        config = self.rules.secagg
        assert config is not None
        noise_seed = self.settings.privacy.noise_seed
        clients = {
            c.public_key: SecureClient(
                c.key, round, seed=hashlib.sha256(f"torchchain/secagg/{noise_seed}/{round}/{c.index}".encode()).digest()
            )
            for c in sampled
        }
        dropouts = self._dropouts(round, sampled)
        server = SecureRound(
            round_number=round, sample=sample, config=config,
            reveal=lambda request: {k: clients[k].reveal(request, config) for k in request.survivors if k in clients},
        )
        view = server.collect_keys({key: client.advertise() for key, client in clients.items()})
        # Shares need at least `threshold` holders: with fewer keys nobody deals and the round fails.
        roster = set() if server.roster is None or len(server.roster) < config.threshold else set(server.roster.clients)
        inboxes = server.route(
            {key: client.deal(view, sample=sample, config=config) for key, client in clients.items() if key in roster}
        )
        view = server.view()
        submissions = []
        forging = self.attack.forges_transactions
        if len(server.participants) >= config.threshold:
            for c in sampled:
                key = c.public_key
                if key not in server.participants or key in dropouts or (forging and c.byzantine):
                    continue
                payload = clients[key].mask(flatten(deltas[c.index]), inboxes[key], view, sample=sample, config=config)
                submissions.append(
                    c.sign_payload(
                        payload, round=round, base_hash=base_hash, codec_tag=SECAGG_CODEC, seconds=seconds,
                        tamper=self._tamper(round, c.index) if c.byzantine else None,
                    )
                )
        seconds["secagg"] = time.perf_counter() - start
        return submissions, server

    def run_round(self, round: int) -> tuple[PreparedBlock, dict[str, float], dict[str, float]]:
        """Run one round; return the node's outcome, per-phase seconds and update norms by client label."""
        seconds: dict[str, float] = {}
        base_hash = self.ledger.head.hash
        # Only the round's sample trains: unsampled clients cost nothing.
        sample = self.rules.sample(round)
        sampled = [c for c in self.clients if c.public_key in sample]
        deltas = self._local_updates(round, sampled, seconds)
        self._poison(round, deltas, seconds)
        norms = {c.label: float(flatten(deltas[c.index]).norm()) for c in sampled}
        forging = self.attack.forges_transactions
        secure = None
        if self.rules.secagg is not None:
            submissions, secure = self._secure_submissions(round, base_hash, sample, sampled, deltas, seconds)
        else:
            submissions = [
                c.submit(
                    deltas[c.index], round=round, base_hash=base_hash, seconds=seconds, codec=self.rules.codec,
                    generator=derive_generator(self.settings.seed, "codec", round, c.index),
                    tamper=self._tamper(round, c.index) if c.byzantine else None,
                )
                for c in sampled
                if not (forging and c.byzantine)
            ]
        if forging:
            submissions += self._forged_submissions(round, base_hash, deltas)
        reference = None
        if self.root is not None:
            start = time.perf_counter()
            reference = self._train_delta(self.root, derive_generator(self.settings.seed, "train", round, "node"), None)
            seconds["reference"] = time.perf_counter() - start
        outcome = self.node.prepare(round, submissions, self.global_state, reference=reference, secure=secure)
        # The block's public aggregate, observed before the checkpoint so that the attack state saved
        # with the block includes it.
        self.attack.observe_aggregate(flatten(compute_delta(outcome.model, self.global_state)))
        # The checkpoint goes to disk before the block, keyed by the block's hash: whenever a
        # crash hits, the state that matches the ledger's last whole block is there to resume from.
        start = time.perf_counter()
        save_checkpoint(
            self.checkpoints,
            outcome.block.hash,
            parent=outcome.block.header.prev_hash,
            attack_state=self.attack.state_dict(),
            clients=self.client_states,
        )
        seconds["checkpoint"] = time.perf_counter() - start
        self.node.commit(outcome)
        seconds.update(outcome.seconds)
        # Clients fetch the next global model from the ledger by its hash, as a remote client would.
        start = time.perf_counter()
        blob = self.ledger.get_blob(outcome.block.header.model_hash)
        self.global_state = update_from_bytes(blob, max_bytes=len(blob))
        seconds["fetch"] = time.perf_counter() - start
        return outcome, seconds, norms

    def evaluate(self) -> dict[str, float]:
        """Evaluate the current global model on the held-out test split.

        For regression, ``rmse`` is in the target's original units (the model is trained on
        standardised targets); ``loss`` stays the mean squared error on the standardised scale.
        """
        self.model.load_state_dict(self.global_state)
        metrics = evaluate(self.model, self.data.test, task=self.data.task, device=self.settings.device)
        if "rmse" in metrics:
            metrics["rmse"] *= self.data.target_scale
        test = self.data.test
        metrics.update(self.attack.evaluation_metrics(self._evaluate_on, test.features, test.targets))
        return metrics

    def _evaluate_on(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return evaluate(
            self.model, DataSplit(features=features, targets=targets), task=self.data.task, device=self.settings.device
        )

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every round not yet in the ledger; return the run's summary (what ``summary.json`` holds)."""
        started = time.perf_counter()
        round_seconds: list[float] = []
        update_sizes: list[int] = []
        phase_totals: dict[str, float] = {}
        metrics: dict[str, float] = {}
        first = self.ledger.height + 1
        bar = tqdm(
            range(first, self.settings.rounds + 1),
            desc="rounds",
            unit="round",
            initial=first - 1,
            total=self.settings.rounds,
            disable=not self.settings.progress,
        )
        stopped_by_budget = None
        for rnd in bar:
            passing = self._epsilon_past_budget(rnd)
            if passing is not None:
                stopped_by_budget = rnd
                print(
                    f"torchchain: privacy budget reached: round {rnd} would spend epsilon={passing:.4g} > "
                    f"privacy.target_epsilon={self.rules.privacy.target_epsilon:g}; the run stops after round {rnd - 1}"
                )
                break
            round_start = time.perf_counter()
            outcome, seconds, norms = self.run_round(rnd)
            evaluated = rnd % self.settings.eval_every == 0 or rnd == self.settings.rounds
            if evaluated:
                eval_start = time.perf_counter()
                metrics = self.evaluate()
                seconds["eval"] = time.perf_counter() - eval_start
            elapsed = time.perf_counter() - round_start
            round_seconds.append(elapsed)
            update_sizes.extend(outcome.update_bytes)
            for name, value in seconds.items():
                phase_totals[name] = phase_totals.get(name, 0.0) + value
            self._log_round(rnd, outcome, metrics if evaluated else {}, seconds, elapsed, norms)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in metrics.items() if k != "loss"}, "height": self.ledger.height})
        bar.close()
        if not metrics:  # resumed after the last block: nothing ran, the final model is unevaluated
            metrics = self.evaluate()

        wall = time.perf_counter() - started
        total_phase = sum(round_seconds) or 1.0
        summary: dict[str, Any] = {
            "final_accuracy": metrics.get("accuracy"),
            "final_loss": metrics.get("loss"),
            "final_rmse": metrics.get("rmse"),
            "rounds": self.settings.rounds,
            "blocks": self.ledger.height + 1,
            "rejected": sum(RoundRecord.from_block(b).rejected.total for b in self.ledger.iter_blocks(1)),
            "ledger": str(self.ledger.path.resolve()),
            "head": self.ledger.head.hash,
            "ledger_bytes": self.node.ledger_bytes,
            "mean_update_bytes": statistics.mean(update_sizes) if update_sizes else 0.0,
            "model_hash": self.ledger.head.header.model_hash,
            "wall_seconds": wall,
            "median_round_seconds": statistics.median(round_seconds) if round_seconds else 0.0,
            "phase_seconds": {k: round(v, 4) for k, v in sorted(phase_totals.items())},
            "phase_share": {k: round(v / total_phase, 4) for k, v in sorted(phase_totals.items())},
            "clients": self.settings.clients,
            "byzantine": sorted(c.index for c in self.clients if c.byzantine),
        }
        if self.rules.privacy.kind != "none":
            summary["privacy"] = {
                "kind": self.rules.privacy.kind,
                "epsilon": self.epsilon,
                "delta": self.rules.privacy.delta if self.rules.privacy.accounts else None,
                "target_epsilon": self.rules.privacy.target_epsilon,
                "stopped_at_round": stopped_by_budget,
            }
        if self.rules.secagg is not None:
            records = [RoundRecord.from_block(b).secagg for b in self.ledger.iter_blocks(1)]
            records = [r for r in records if r is not None]
            summary["privacy"].update(
                threshold=self.rules.secagg.threshold,
                dropped=sum(len(r.dropped) for r in records),
                rejected=sum(len(r.rejected) + len(r.refused) for r in records),
                failed_rounds=sum(1 for r in records if r.failure is not None),
            )
        if self.data.task == "regression":
            del summary["final_accuracy"]
        else:
            del summary["final_rmse"]
        return summary

    def _log_round(
        self,
        rnd: int,
        outcome: PreparedBlock,
        metrics: Mapping[str, float],
        seconds: Mapping[str, float],
        elapsed: float,
        norms: Mapping[str, float],
    ) -> None:
        """Log one round; ``metrics`` is empty in rounds that were not evaluated."""
        if self.writer is None:
            return
        scalars = {f"eval/{k}": v for k, v in metrics.items()}
        scalars.update(
            {
                "chain/height": self.ledger.height,
                "chain/mine_seconds": seconds.get("mine", 0.0),
                "chain/rejected": outcome.rejections.total,
                "chain/ledger_bytes": self.node.ledger_bytes,
                "time/round_seconds": elapsed,
                # Each stage of the round: train, serialize, hash, sign, validate, aggregate, mine, write, ...
                **{f"time/{stage}": spent for stage, spent in seconds.items()},
            }
        )
        if outcome.update_bytes:
            scalars["chain/bytes_per_update"] = sum(outcome.update_bytes) / len(outcome.update_bytes)
        if outcome.result.epsilon is not None:
            scalars["privacy/epsilon"] = outcome.result.epsilon
        if outcome.result.secagg is not None:
            scalars["privacy/dropped"] = len(outcome.result.secagg.outcome.dropped)
        self.writer.scalars(rnd, scalars)
        self.writer.update_norms(rnd, norms)
        self.writer.trust(rnd, {self._labels[c.public_key]: outcome.trust.get(c.public_key, 0.0) for c in self.clients})


class _ChainForger:
    """The :class:`~torchchain.attacks.base.Forger` this runtime lends an attack for one round."""

    def __init__(self, ledger: Ledger, *, seed: int, round: int, base_hash: str) -> None:
        self._ledger = ledger
        self._seed = seed
        self._round = round
        self._base_hash = base_hash

    def earlier_submissions(self) -> list[Submission]:
        if self._ledger.height < 1:
            return []
        return [
            Submission(transaction=tx, payload=self._ledger.get_blob(tx.update_hash))
            for tx in self._ledger.head.transactions
        ]

    def submit_as(self, identity: str, update: Mapping[str, torch.Tensor]) -> Submission:
        key = SigningKey.from_seed_material(f"torchchain/{identity}/seed={self._seed}")
        payload = update_to_bytes(update)
        tx = Transaction(
            client=key.public_key, round=self._round, base_hash=self._base_hash,
            update_hash=sha256_hex(payload), num_samples=1,
        ).signed(key)
        return Submission(transaction=tx, payload=payload)
