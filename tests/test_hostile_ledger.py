"""A ledger handed to ``torchchain verify|audit|inspect`` may come from an enemy.

Each test plays that enemy with the library's own functions (``make_genesis``, ``make_block``,
``Node``, ``Transaction.signed``, ...) and checks that the attack is refused with a clear reason,
and where it matters that nothing was run, imported or written, and that time and memory stayed
bounded. The end-to-end runs use the digits dataset and the MLP on tiny settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import hostile_helpers as h
from composing import compose_config
from torchchain.chain.block import MAX_TIME_MS, Block, make_block
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.encoding import canonical_json
from torchchain.chain.ledger import BLOBS_DIR, BLOCKS_DIR, MAX_CLOCK_SKEW_MS, Ledger, block_file_name
from torchchain.chain.pow import meets_difficulty
from torchchain.cli import main as cli
from torchchain.errors import ConfigError, LedgerError, SerializationError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.record import SAMPLE_SIZE, Rejections, RoundRecord
from torchchain.protocol.round import ReplayMismatch, RoundRules, execute_round, round_inputs_from
from torchchain.runtime.node import Node
from torchchain.protocol.submission import Submission, select_submissions
from torchchain.protocol.verify import verify_ledger
from torchchain.strategies import Bulyan, GeoMed
from torchchain.strategies.kernels import iterated_krum_selection, pairwise_sq_distances
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

#: A real run in a few seconds: 4 clients, 2 rounds of 2 SGD steps, 4-bit proof of work.
TINY = ["clients=4", "rounds=2", "local_steps=2", "chain.difficulty=4", "runtime.progress=false"]
MEDIAN_TARGET = "torchchain.strategies.Median"
F32_MAX = torch.finfo(torch.float32).max


@pytest.fixture(scope="module")
def median_run(tmp_path_factory):
    """A finished real run (median); tests damage private copies of it."""
    run_dir = tmp_path_factory.mktemp("median-run")
    summary = run(compose_config(TINY), run_dir)
    return run_dir, summary


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- 1. the genesis config must not run code in audit --------------------------------------------


def _touch(victim: Path) -> dict:
    """A config node that Hydra's ``instantiate`` turns into ``Path(victim).touch()``."""
    return {"_target_": "pathlib.Path.touch", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(victim)]}]}


HOSTILE_STRATEGIES = {
    "oc.create-interpolation": (
        lambda v: {"_target_": MEDIAN_TARGET, "f": "${oc.create:" + json.dumps(_touch(v)) + "}", "pre": []},
        "is an interpolation",
    ),
    "nested-target-argument": (lambda v: {"_target_": MEDIAN_TARGET, "f": _touch(v), "pre": []}, "names a _target_"),
    "deeply-nested-target": (
        lambda v: {"_target_": MEDIAN_TARGET, "f": None, "extra": {"a": [{"b": _touch(v)}]}},
        "names a _target_",
    ),
    "strategy-target-itself": (lambda v: _touch(v), "is not built in, so it is not imported"),
    "pre-step-target": (
        lambda v: {"_target_": MEDIAN_TARGET, "f": None, "pre": [_touch(v)]},
        "not a built-in pre-aggregation step",
    ),
    "hydra-args-key": (lambda v: {"_target_": MEDIAN_TARGET, "_args_": [_touch(v)]}, "'_args_'"),
    "hydra-partial-key": (lambda v: {"_target_": MEDIAN_TARGET, "_partial_": True, "f": _touch(v)}, "'_partial_'"),
    "interpolated-pre-name": (
        lambda v: {"_target_": MEDIAN_TARGET, "pre": ["${oc.create:" + json.dumps(_touch(v)) + "}"]},
        "strategy.pre[0]",
    ),
}


def test_the_side_effect_payload_is_live_under_hydra(tmp_path):
    """Control: handed to Hydra, the payload used below really creates the file."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    victim = tmp_path / "control"
    try:
        instantiate(_touch(victim))
    except InstantiationException as exc:  # a Hydra with a stricter target policy
        pytest.skip(f"this Hydra refuses the payload itself: {exc}")
    assert victim.exists()


#: A pre step's own ``pre`` key is skipped by the registry, unchecked: its nested _target_ is
#: never run, but neither is the ledger refused, and ``inspect`` shows it as recorded.
HOSTILE_STRATEGIES["target-under-a-pre-steps-pre-key"] = (
    lambda v: {
        "_target_": MEDIAN_TARGET,
        "f": 1,
        "pre": [{"_target_": "torchchain.strategies.Bucketing", "s": 2, "pre": [_touch(v)]}],
    },
    "names a _target_",
)
@pytest.mark.parametrize(
    "name",
    [
        n for n in sorted(HOSTILE_STRATEGIES)
    ],
)
def test_genesis_config_that_would_run_code_is_refused_by_audit_without_side_effect(tmp_path, capsys, name):
    victim = tmp_path / "pwned"
    make_node, match = HOSTILE_STRATEGIES[name]
    ledger, _ = h.genesis_ledger(tmp_path / "ledger", make_node(victim))
    ledger.close()
    path = tmp_path / "ledger"

    with pytest.raises(LedgerError, match=re.escape(match)) as info:
        audit_ledger(path)
    assert "the recorded protocol cannot be rebuilt" in info.value.reason
    assert info.value.block == block_file_name(ledger.genesis)
    with pytest.raises(ConfigError, match=re.escape(match)):
        RoundRules.from_genesis(ledger.genesis)

    assert cli(["audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert "torchchain audit: FAILED" in err and match in err
    # Verifying and inspecting never build the strategy; they only print what it names.
    assert cli(["verify", str(path)]) == 0
    assert cli(["inspect", str(path), "--block", "0"]) == 0
    assert not victim.exists()


# -- 2. nothing the ledger names is imported before it is checked -------------------------------


@pytest.mark.parametrize("module", ["antigravity", "venv.__main__", "this"])
def test_strategy_from_an_unknown_module_is_never_imported(tmp_path, capsys, monkeypatch, module):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    target = f"{module}.X"
    ledger, _ = h.genesis_ledger(tmp_path / "ledger", {"_target_": target, "f": None})
    ledger.close()

    with pytest.raises(LedgerError, match="not built in") as info:
        audit_ledger(tmp_path / "ledger")
    assert f"--trust {target}" in info.value.reason
    # Trusting another class does not open the door to this one.
    with pytest.raises(LedgerError, match="not built in"):
        audit_ledger(tmp_path / "ledger", trust=["some_other_pkg.Strategy"])
    assert cli(["audit", str(tmp_path / "ledger")]) == 1
    err = capsys.readouterr().err
    assert "not built in" in err and f"--trust {target}" in err
    assert module not in sys.modules


USER_MODULE = "hostile_ledger_user_strategy"
USER_SOURCE = '''
import torch
from torchchain.strategies import Aggregate, Strategy

IMPORTED = True


class PlainMean(Strategy):
    name = "plain_mean"

    def aggregate(self, updates, weights):
        n = updates.shape[0]
        return Aggregate(update=updates.mean(dim=0), trust=torch.full((n,), 1.0 / n, dtype=torch.float64))


class NotAStrategy:
    pass
'''


def test_trust_imports_only_the_named_class(tmp_path, capsys, monkeypatch):
    package_dir = tmp_path / "user_code"
    package_dir.mkdir()
    (package_dir / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    monkeypatch.syspath_prepend(str(package_dir))
    target = f"{USER_MODULE}.PlainMean"
    path = tmp_path / "ledger"
    try:
        # The user's own node trusts its own class and mines with it.
        ledger, state = h.genesis_ledger(path, {"_target_": target, "f": None, "pre": []})
        h.mine_honest_rounds(ledger, state, 2, trusted=[target])
        ledger.close()
        sys.modules.pop(USER_MODULE, None)

        # An auditor who did not name it imports nothing.
        with pytest.raises(LedgerError, match=re.escape(f"--trust {target}")):
            audit_ledger(path)
        with pytest.raises(LedgerError, match="not built in"):
            audit_ledger(path, trust=[f"{USER_MODULE}.NotTheRecordedOne"])
        assert cli(["audit", str(path)]) == 1
        assert USER_MODULE not in sys.modules

        # Naming exactly the recorded class imports it, and the replay passes.
        report = audit_ledger(path, trust=[target])
        assert [r.round for r in report.rounds] == [1, 2] and all(r.matches for r in report.rounds)
        assert sys.modules[USER_MODULE].IMPORTED is True
        assert cli(["audit", str(path), "--trust", target]) == 0
        assert "audit OK" in capsys.readouterr().out
    finally:
        sys.modules.pop(USER_MODULE, None)


def test_trusted_name_that_is_not_a_strategy_is_refused(tmp_path, monkeypatch):
    package_dir = tmp_path / "user_code"
    package_dir.mkdir()
    (package_dir / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    monkeypatch.syspath_prepend(str(package_dir))
    target = f"{USER_MODULE}.NotAStrategy"
    try:
        ledger, _ = h.genesis_ledger(tmp_path / "ledger", {"_target_": target})
        ledger.close()
        with pytest.raises(LedgerError, match="Strategy subclass"):
            audit_ledger(tmp_path / "ledger", trust=[target])
    finally:
        sys.modules.pop(USER_MODULE, None)


# -- 3. unbounded arguments are refused at once --------------------------------------------------


def _s(name: str, **kwargs) -> dict:
    return {"_target_": f"torchchain.strategies.{name}", **kwargs}


UNBOUNDED = {
    "centered_clipping-iterations=1e12": (_s("CenteredClipping", iterations=10**12), "iterations"),
    "centered_clipping-iterations=true": (_s("CenteredClipping", iterations=True), "iterations"),
    "centered_clipping-tau=1e308": (_s("CenteredClipping", tau=1e308), "tau"),
    "centered_clipping-tau=0": (_s("CenteredClipping", tau=0.0), "tau"),
    "geomed-max_iter=1e12": (_s("GeoMed", max_iter=10**12), "max_iter"),
    "geomed-nu=1e308": (_s("GeoMed", nu=1e308), "nu"),
    "geomed-tol=1e308": (_s("GeoMed", tol=1e308), "tol"),
    "median-f=1e9": (_s("Median", f=10**9), "f must be an int"),
    "krum-f=1e9": (_s("Krum", f=10**9), "f must be an int"),
    "multikrum-m=1e12": (_s("MultiKrum", m=10**12), "m (null for n - f)"),
    "lnearest-l=1e12": (_s("LNearest", l=10**12), "l (null for n - f)"),
    "trimmed_mean-trim=1e12": (_s("TrimmedMean", trim=10**12), "trim"),
    "fltrust-root_samples=1e12": (_s("FLTrust", root_samples=10**12), "root_samples"),
    "bucketing-s=1e12": (_s("Median", pre=[_s("Bucketing", s=10**12)]), "bucket size s"),
    "clipping-c=1e308": (_s("Median", pre=[_s("Clipping", c=1e308)]), "norm bound c"),
    "pre-20000-steps": (_s("Median", pre=["clipping"] * 20_000), "pre"),
    "argument-with-100000-values": (_s("Median", f=list(range(100_000))), "more than 1000 values"),
    "argument-string-of-1MB": (_s("FedAvg", weights="x" * 1_000_000), "over the limit"),
}


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_unbounded_strategy_argument_is_refused_quickly(tmp_path, name):
    node, match = UNBOUNDED[name]
    ledger, _ = h.genesis_ledger(tmp_path / "ledger", node)
    ledger.close()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=re.escape(match)):
        RoundRules.from_genesis(ledger.genesis)
    assert time.perf_counter() - start < 5

    start = time.perf_counter()
    with pytest.raises(LedgerError, match=re.escape(match)):
        audit_ledger(tmp_path / "ledger")
    assert time.perf_counter() - start < 5


def test_infinite_argument_cannot_even_be_recorded():
    with pytest.raises(SerializationError, match="cannot encode"):
        h.genesis_block(_s("CenteredClipping", tau=math.inf))
    with pytest.raises(SerializationError, match="cannot encode"):
        h.genesis_block(_s("GeoMed", nu=math.nan))


# -- 4. a reader never disturbs the writer --------------------------------------------------------


def test_readers_leave_a_writers_temporary_files_and_a_second_writer_is_refused(tmp_path, capsys):
    path = tmp_path / "ledger"
    ledger, state = h.genesis_ledger(path)
    h.mine_honest_rounds(ledger, state, 2)
    in_flight = [path / BLOCKS_DIR / ".tmp-xyz", path / BLOBS_DIR / ".tmp-xyz"]
    for tmp in in_flight:
        tmp.write_bytes(b"half a file the writer is still writing")

    reader = Ledger.open(path)
    assert reader.height == 2 and not reader.writable
    with pytest.raises(LedgerError, match="opened for reading"):
        reader.put_blob(b"x")
    assert verify_ledger(path).height == 2
    assert len(audit_ledger(path).rounds) == 2
    assert cli(["inspect", str(path)]) == 0
    assert cli(["inspect", str(path), "--block", "2", "--json"]) == 0
    assert cli(["verify", str(path)]) == 0
    capsys.readouterr()
    assert all(tmp.exists() for tmp in in_flight)

    with pytest.raises(LedgerError, match="another process is writing"):
        Ledger.open_writer(path)
    assert all(tmp.exists() for tmp in in_flight)
    assert ledger.writable and ledger.height == 2

    # Once the writer is gone, the next writer clears what it left.
    ledger.close()
    with Ledger.open_writer(path) as second:
        assert second.height == 2
    assert not any(tmp.exists() for tmp in in_flight)


# -- 5. a flood of junk submissions --------------------------------------------------------------


def test_flood_from_non_members_gives_a_bounded_record_and_a_readable_block(tmp_path):
    started = time.perf_counter()
    flood = 5_000
    path = tmp_path / "ledger"
    ledger, state = h.genesis_ledger(path)
    base = ledger.head_hash
    payload = update_to_bytes(h.update(99, 1))
    submissions = []
    for _ in range(flood):
        key = SigningKey.generate()
        submissions.append(Submission(h.signed(key, payload, rnd=1, base_hash=base), payload))
    honest = [h.submission(h.KEYS[i], h.update(i, 1), rnd=1, base_hash=base) for i in range(4)]
    random.Random(0).shuffle(submissions)
    submissions[2500:2500] = honest

    rules = RoundRules.from_genesis(ledger.genesis)
    selection = select_submissions(submissions, rules.context(1, base, state))
    assert len(selection.accepted) == 4
    record = Rejections.from_refusals(selection.rejected)
    assert record.total == flood and dict(record.counts) == {"unknown_client": flood}
    assert len(record.sample) == SAMPLE_SIZE
    assert [e["client"] for e in record.sample] == sorted(e["client"] for e in record.sample)

    prepared = h.node(ledger).mine_round(1, submissions, state, time_ms=h.T0 + 1)
    ledger.close()
    block_file = path / BLOCKS_DIR / block_file_name(prepared.block)
    assert block_file.stat().st_size < 64 * 1024  # bounded whatever the flood

    stored = RoundRecord.from_block(Ledger.open(path).head)
    assert stored.rejected.total == flood and len(stored.rejected.sample) == SAMPLE_SIZE
    assert sum(stored.rejected.counts.values()) == flood
    assert verify_ledger(path).transactions == 4
    assert audit_ledger(path).rounds[0].rejected == flood
    assert time.perf_counter() - started < 20


# -- 6. rewritten history ------------------------------------------------------------------------


def _genesis_only(tmp_path, *, honest_rounds: int = 0) -> tuple[Path, Block]:
    ledger, state = h.genesis_ledger(tmp_path / "ledger")
    h.mine_honest_rounds(ledger, state, honest_rounds)
    ledger.close()
    return tmp_path / "ledger", ledger.genesis


def _weak_pow(block: Block) -> Block:
    """The same block with a nonce that does not meet its difficulty, re-signed by its miner."""
    bits = block.header.difficulty
    nonce = next(n for n in range(1000) if not meets_difficulty(block.header.with_nonce(n).hash(), bits))
    weak = Block(header=block.header.with_nonce(nonce), transactions=block.transactions, meta=block.meta)
    return weak.signed(h.MINER)


def _signed_by_outsider(block: Block) -> Block:
    return dataclasses.replace(block, signature=h.OUTSIDER.sign(block.header.signing_payload()))


FORGERIES = {
    "mined-by-non-miner": (
        lambda g: h.forged_block(g, miner=h.OUTSIDER),
        "is not one of the miners the genesis block authorizes",
    ),
    "signed-by-non-miner": (lambda g: _signed_by_outsider(h.forged_block(g)), "is not signed by its miner"),
    "difficulty-0": (
        lambda g: h.forged_block(g, difficulty=0),
        f"difficulty 0 differs from the chain's difficulty {h.DIFFICULTY}",
    ),
    "weak-proof-of-work": (lambda g: _weak_pow(h.forged_block(g)), "proof of work does not meet"),
    "round-repeated": (lambda g: h.forged_block(g, round=0), "rounds increase by one"),
    "round-skipped": (lambda g: h.forged_block(g, round=2), "rounds increase by one"),
    "round-far-ahead": (lambda g: h.forged_block(g, round=10**6), "rounds increase by one"),
    "time-backwards": (
        lambda g: h.forged_block(g, time_ms=g.header.time_ms - MAX_CLOCK_SKEW_MS - 1),
        "ms of clock skew is tolerated",
    ),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_fork_block_is_refused_by_every_reader(tmp_path, capsys, name):
    # The forged block competes with an honest block 1: every branch is checked, not only the best.
    path, genesis = _genesis_only(tmp_path, honest_rounds=1)
    forge, match = FORGERIES[name]
    block = forge(genesis)
    h.plant_block(path, block)
    name_on_disk = block_file_name(block)

    for read in (verify_ledger, audit_ledger, Ledger.open):
        with pytest.raises(LedgerError, match=re.escape(match)) as info:
            read(path)
        assert info.value.block == name_on_disk
    for command in ("verify", "audit", "inspect"):
        assert cli([command, str(path)]) == 1
        assert match in capsys.readouterr().err

    # The writer refuses it too.
    (path / BLOCKS_DIR / name_on_disk).unlink()
    with Ledger.open_writer(path) as writer, pytest.raises(LedgerError, match=re.escape(match)):
        writer.append(block)


def test_clock_skew_up_to_the_limit_is_tolerated(tmp_path):
    path, genesis = _genesis_only(tmp_path, honest_rounds=1)
    h.plant_block(path, h.forged_block(genesis, time_ms=genesis.header.time_ms - MAX_CLOCK_SKEW_MS))
    report = verify_ledger(path)
    assert report.height == 1 and report.forks == 1


def test_expect_head_catches_a_truncated_ledger(tmp_path, capsys):
    path = tmp_path / "ledger"
    ledger, state = h.genesis_ledger(path)
    h.mine_honest_rounds(ledger, state, 2)
    head, head_file = ledger.head_hash, block_file_name(ledger.head)
    ledger.close()
    assert verify_ledger(path, expect_head=head).head == head

    (path / BLOCKS_DIR / head_file).unlink()
    assert verify_ledger(path).height == 1  # on its own, a shorter chain is a valid chain
    with pytest.raises(LedgerError, match=r"truncated or replaced"):
        verify_ledger(path, expect_head=head)
    with pytest.raises(LedgerError, match=r"truncated or replaced"):
        audit_ledger(path, expect_head=head)
    for command in ("verify", "audit"):
        assert cli([command, str(path), "--expect-head", head]) == 1
        assert "truncated or replaced" in capsys.readouterr().err
    assert cli(["verify", str(path), "--expect-head", "not-a-hash"]) == 1
    assert "--expect-head must be a block hash" in capsys.readouterr().err


def test_cli_checks_the_head_against_the_runs_summary(tmp_path, capsys, median_run):
    intact = h.copy_run(median_run[0], tmp_path / "intact")
    assert cli(["verify", str(intact / "ledger")]) == 0
    assert "checking the head against" in capsys.readouterr().out

    truncated = h.copy_run(median_run[0], tmp_path / "truncated")
    last = sorted((truncated / "ledger" / BLOCKS_DIR).glob("00000002-*.json"))
    assert len(last) == 1
    last[0].unlink()
    for command in ("verify", "audit"):
        assert cli([command, str(truncated / "ledger")]) == 1
        captured = capsys.readouterr()
        assert "checking the head against" in captured.out
        assert "truncated or replaced" in captured.err

    # A damaged summary is reported, not traced back.
    (truncated / "summary.json").write_text('{"head": ')
    assert cli(["verify", str(truncated / "ledger")]) == 1
    assert "pass --expect-head instead" in capsys.readouterr().err


# -- 7. verify and audit stream the chain --------------------------------------------------------


@pytest.fixture(scope="module")
def long_ledgers(tmp_path_factory):
    """The same chain at 50 and at 10 round blocks; every block holds a full rejection sample."""
    root = tmp_path_factory.mktemp("long")
    ledger, state = h.genesis_ledger(root / "50")
    h.mine_honest_rounds(ledger, state, 50, junk=SAMPLE_SIZE)
    ledger.close()
    short = root / "10"
    (short / BLOCKS_DIR).mkdir(parents=True)
    (short / BLOBS_DIR).mkdir()
    for blob in (root / "50" / BLOBS_DIR).iterdir():
        (short / BLOBS_DIR / blob.name).write_bytes(blob.read_bytes())
    for block in sorted((root / "50" / BLOCKS_DIR).iterdir())[:11]:
        (short / BLOCKS_DIR / block.name).write_bytes(block.read_bytes())
    return root / "50", short


def _peak(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ledger_keeps_headers_not_bodies(long_ledgers):
    path, _ = long_ledgers
    ledger = Ledger.open(path)
    assert ledger.height == 50
    for block in ledger.iter_blocks():
        entry = ledger._tree.get(block.hash)
        assert type(entry).__name__ == "BlockHeader" and not isinstance(entry, Block)
    assert len(ledger._cache) <= Ledger._CACHE_SIZE


def test_verify_memory_does_not_grow_with_the_chain(long_ledgers):
    long, short = long_ledgers
    assert verify_ledger(short).height == 10
    peak10, peak50 = _peak(verify_ledger, short), _peak(verify_ledger, long)
    assert peak50 < 3 * peak10
    # Sharper: 40 more blocks may cost their headers, not their bodies. Holding the parsed
    # blocks costs several times their file size; this allows less than the files themselves.
    extra_bytes = sum(p.stat().st_size for p in sorted((long / BLOCKS_DIR).iterdir())[11:])
    assert peak50 - peak10 < extra_bytes, (peak10, peak50, extra_bytes)


def test_audit_memory_does_not_grow_with_the_chain(long_ledgers):
    long, short = long_ledgers
    peak10, peak50 = _peak(audit_ledger, short), _peak(audit_ledger, long)
    assert peak50 < 3 * peak10
    extra_bytes = sum(p.stat().st_size for p in sorted((long / BLOCKS_DIR).iterdir())[11:])
    assert peak50 - peak10 < extra_bytes, (peak10, peak50, extra_bytes)


@pytest.mark.parametrize("what", ["blob", "block-file"])
def test_reading_a_small_file_allocates_little(tmp_path, what):
    ledger, _ = h.genesis_ledger(tmp_path / "ledger")
    ledger.close()
    reader = Ledger.open(tmp_path / "ledger")
    if what == "blob":
        peak = _peak(reader.get_blob, reader.genesis.header.model_hash)
    else:
        peak = _peak(Ledger.open, tmp_path / "ledger")
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.0f} MiB traced to read a file of a few KB"


# -- 8. verify checks the round record's own blobs -----------------------------------------------


@pytest.fixture(scope="module")
def record_blob_runs(tmp_path_factory):
    runs = {}
    for strategy, field in (("fltrust", "reference"), ("centered_clipping", "state")):
        run_dir = tmp_path_factory.mktemp(strategy)
        run(compose_config([*TINY, f"strategy={strategy}"]), run_dir)
        runs[field] = run_dir
    return runs


@pytest.mark.parametrize("damage", ["delete", "flip"])
@pytest.mark.parametrize("field,what", [("reference", "reference update blob"), ("state", "round state blob")])
def test_verify_checks_the_records_reference_and_state_blobs(tmp_path, record_blob_runs, field, what, damage):
    run_dir = h.copy_run(record_blob_runs[field], tmp_path / "run")
    path = run_dir / "ledger"
    ledger = Ledger.open(path)
    block = ledger.block(1)
    digest = RoundRecord.from_block(block).to_meta()[field]
    assert digest is not None and verify_ledger(path).height == 2
    blob = path / BLOBS_DIR / digest
    if damage == "delete":
        blob.unlink()
        match = f"{what} {digest[:12]} is missing"
    else:
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        match = f"{what} {digest[:12]} is corrupt"
    with pytest.raises(LedgerError, match=re.escape(match)) as info:
        verify_ledger(path)
    assert info.value.block == block_file_name(block)
    with pytest.raises(LedgerError, match=re.escape(match)):
        audit_ledger(path)
    assert cli(["verify", str(path)]) == 1


# -- 9. a huge but finite update -----------------------------------------------------------------


def _finite(state) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values())


def test_update_that_overflows_the_model_keeps_the_parent(tmp_path):
    members = [k.public_key for k in h.KEYS]
    rules = RoundRules.from_config(h.config(h.FEDAVG, clients=5), members)
    parent = {k: torch.full_like(v, F32_MAX) for k, v in h.model().items()}
    base = "ab" * 32
    subs = [h.submission(h.KEYS[i], h.update(i, 1), rnd=1, base_hash=base) for i in range(4)]
    huge = {k: torch.full_like(v, F32_MAX) for k, v in parent.items()}
    subs.append(h.submission(h.KEYS[4], huge, rnd=1, base_hash=base))
    selection = select_submissions(subs, rules.context(1, base, parent))
    assert len(selection.accepted) == 5  # finite, well-formed: nothing to reject it for
    result = execute_round(rules, parent, {}, round_inputs_from(1, selection.accepted, None))
    assert result.outcome == "kept_parent"
    assert result.model_bytes == update_to_bytes(parent) and _finite(result.model)
    assert set(result.trust.values()) == {0.0}


def test_one_client_sending_float32_max_never_makes_the_chain_non_finite(tmp_path):
    path = tmp_path / "ledger"
    ledger, state = h.genesis_ledger(path, h.FEDAVG, clients=5)
    node = h.node(ledger)
    outcomes = []
    for rnd in range(1, 9):
        base = ledger.head_hash
        subs = [h.submission(h.KEYS[i], h.update(i, rnd), rnd=rnd, base_hash=base) for i in range(4)]
        huge = {k: torch.full_like(v, F32_MAX) for k, v in state.items()}
        subs.append(h.submission(h.KEYS[4], huge, rnd=rnd, base_hash=base))
        prepared = node.mine_round(rnd, subs, state, time_ms=h.T0 + rnd)
        assert prepared.rejections.total == 0 and len(prepared.block.transactions) == 5
        assert _finite(prepared.model)
        outcome = RoundRecord.from_block(ledger.head).outcome
        outcomes.append(outcome)
        if outcome == "kept_parent":
            assert prepared.result.model_bytes == update_to_bytes(state)
            assert set(RoundRecord.from_block(ledger.head).trust.values()) == {0.0}
            break
        state = prepared.model
    assert outcomes[-1] == "kept_parent" and set(outcomes[:-1]) <= {"aggregated"}

    # The chain goes on: honest rounds still aggregate.
    for rnd in range(len(outcomes) + 1, len(outcomes) + 3):
        base = ledger.head_hash
        subs = [h.submission(h.KEYS[i], h.update(i, rnd), rnd=rnd, base_hash=base) for i in range(5)]
        prepared = node.mine_round(rnd, subs, state, time_ms=h.T0 + rnd)
        assert RoundRecord.from_block(ledger.head).outcome == "aggregated"
        assert prepared.rejections.total == 0 and _finite(prepared.model)
        # (The model sits near float32's maximum, where updates of 0.01 round away; what matters
        # is that the round aggregates every honest update again.)
        assert all(w > 0 for w in RoundRecord.from_block(ledger.head).trust.values())
        state = prepared.model
    ledger.close()
    report = audit_ledger(path)
    assert all(r.matches for r in report.rounds) and len(report.rounds) == len(outcomes) + 2


# -- 10. equivocation ----------------------------------------------------------------------------


@pytest.fixture
def round_one(tmp_path):
    ledger, state = h.genesis_ledger(tmp_path / "ledger")
    base = ledger.head_hash
    honest = [h.submission(h.KEYS[i], h.update(i, 1), rnd=1, base_hash=base) for i in range(1, 4)]
    first = h.submission(h.KEYS[0], h.update(0, 1), rnd=1, base_hash=base)
    second = h.submission(h.KEYS[0], h.update(0, 1, scale=0.02), rnd=1, base_hash=base)
    yield ledger, state, honest, first, second
    ledger.close()


def _outcome(selection):
    accepted = [(tx.tx_hash, payload) for tx, payload, _ in selection.accepted]
    rejected = sorted((tx.tx_hash, code) for tx, code, _ in selection.rejected)
    return accepted, rejected, Rejections.from_refusals(selection.rejected)


def test_two_signed_updates_from_one_member_are_both_refused_in_either_order(round_one):
    ledger, state, honest, first, second = round_one
    assert first.transaction.tx_hash != second.transaction.tx_hash
    rules = RoundRules.from_genesis(ledger.genesis)
    context = rules.context(1, ledger.head_hash, state)
    orders = [
        [first, second, *honest],
        [second, first, *honest],
        [*honest, second, first],
        [first, *honest, second],
    ]
    outcomes = [_outcome(select_submissions(order, context)) for order in orders]
    assert all(o == outcomes[0] for o in outcomes)
    accepted, rejected, record = outcomes[0]
    by_client = sorted(honest, key=lambda s: s.transaction.client)
    assert accepted == [(s.transaction.tx_hash, s.payload) for s in by_client]
    both = [(first.transaction.tx_hash, "equivocation"), (second.transaction.tx_hash, "equivocation")]
    assert rejected == sorted(both)
    assert dict(record.counts) == {"equivocation": 2}

    # The node mines the very same block whatever the arrival order.
    node = h.node(ledger)
    blocks = {node.prepare(1, order, state, time_ms=h.T0 + 1).block.hash for order in orders}
    assert len(blocks) == 1


def test_identical_resend_is_accepted_once(round_one):
    ledger, state, honest, first, _ = round_one
    context = RoundRules.from_genesis(ledger.genesis).context(1, ledger.head_hash, state)
    selection = select_submissions([first, *honest, first, first], context)
    assert [tx.client for tx, _, _ in selection.accepted].count(h.KEYS[0].public_key) == 1
    assert [code for _, code, _ in selection.rejected] == ["duplicate", "duplicate"]


def test_resend_with_garbage_bytes_first_does_not_displace_the_valid_copy(round_one):
    ledger, state, honest, first, second = round_one
    context = RoundRules.from_genesis(ledger.genesis).context(1, ledger.head_hash, state)
    garbage = Submission(first.transaction, b"garbage")
    wrong_bytes = Submission(first.transaction, second.payload)
    selection = select_submissions([garbage, wrong_bytes, *honest, first], context)
    chosen = [(tx, payload) for tx, payload, _ in selection.accepted if tx.client == h.KEYS[0].public_key]
    assert chosen == [(first.transaction, first.payload)]
    assert [code for _, code, _ in selection.rejected] == ["hash_mismatch", "hash_mismatch"]


def test_forged_copy_cannot_frame_an_honest_member_as_an_equivocator(round_one):
    ledger, state, honest, first, _ = round_one
    context = RoundRules.from_genesis(ledger.genesis).context(1, ledger.head_hash, state)
    forged_tx = dataclasses.replace(first.transaction, num_samples=first.transaction.num_samples + 1)
    selection = select_submissions([Submission(forged_tx, first.payload), first, *honest], context)
    assert h.KEYS[0].public_key in {tx.client for tx, _, _ in selection.accepted}
    assert [code for _, code, _ in selection.rejected] == ["bad_signature"]


# -- 11. geometric median ------------------------------------------------------------------------


def test_geomed_ignores_one_far_row():
    strategy = GeoMed()
    strategy.setup(num_clients=7, num_byzantine=0)
    rows = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [1e10]], dtype=torch.float64)
    result = strategy(rows, torch.ones(7, dtype=torch.float64), generator=torch.Generator())
    assert abs(float(result.update[0]) - 3.0) < 1e-3
    assert float(result.trust[6]) < 1e-3


def test_a_client_claiming_2_63_samples_does_not_own_geomed(tmp_path):
    members = [k.public_key for k in h.KEYS]
    rules = RoundRules.from_config(h.config({"_target_": "torchchain.strategies.GeoMed"}, clients=5), members)
    parent, base = h.model(), "cd" * 32
    subs = [h.submission(h.KEYS[i], h.update(i, 1), rnd=1, base_hash=base) for i in range(4)]
    far = {k: torch.full_like(v, 100.0) for k, v in parent.items()}
    subs.append(h.submission(h.KEYS[4], far, rnd=1, base_hash=base, num_samples=2**63 - 1))
    selection = select_submissions(subs, rules.context(1, base, parent))
    assert len(selection.accepted) == 5
    result = execute_round(rules, parent, {}, round_inputs_from(1, selection.accepted, None))
    assert result.outcome == "aggregated"
    moved = max(float((result.model[k] - parent[k]).abs().max()) for k in parent)
    assert moved < 0.1, f"the aggregate moved {moved} towards the far row"
    assert result.trust[h.KEYS[4].public_key] < 0.05


# -- 12. Bulyan's last pick ----------------------------------------------------------------------


def test_bulyan_f1_does_not_pick_by_row_index():
    """n = 7, f = 1: five picks, the last among three rows. With Krum's own neighbour count
    (r - f - 2 = 0) every score there is 0 and the lowest index wins, so reordering these rows
    gives 11, 12 or 13; the rule must give the same result for every order."""
    rows = torch.tensor([[0.0], [10.0], [11.0], [12.0], [13.0], [14.0], [30.0]], dtype=torch.float64)
    strategy = Bulyan(f=1)
    strategy.setup(num_clients=7, num_byzantine=1)
    rng = random.Random(0)
    orders = [list(range(7)), list(reversed(range(7)))] + [rng.sample(range(7), 7) for _ in range(40)]
    updates, trusts, picks = set(), set(), set()
    for order in orders:
        shuffled = rows[order]
        result = strategy(shuffled, torch.ones(7, dtype=torch.float64), generator=torch.Generator())
        updates.add(float(result.update[0]))
        trusts.add(tuple(sorted((float(shuffled[i, 0]), round(float(result.trust[i]), 12)) for i in range(7))))
        picked = iterated_krum_selection(pairwise_sq_distances(shuffled), 1, 5)
        picks.add(frozenset(float(shuffled[i, 0]) for i in picked.tolist()))
    assert updates == {12.0}
    assert len(trusts) == 1 and len(picks) == 1


# -- 13. config values that must be refused, not crash -------------------------------------------


@pytest.mark.parametrize(
    "override,key",
    [
        ("lr=inf", "lr"),
        ("chain.max_update_mb=nan", "chain.max_update_mb"),
        ("chain.max_update_mb=0", "chain.max_update_mb"),
        ("seed=1e400", "seed"),
        ("seed=true", "seed"),
        ("local_epochs=1e9", "local_epochs"),
    ],
)
def test_absurd_config_value_is_refused_before_any_file(tmp_path, override, key):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(key)):
        run(compose_config([*TINY, override]), run_dir)
    assert not run_dir.exists()


def test_block_time_beyond_year_9999_is_refused(tmp_path, capsys):
    path, genesis = _genesis_only(tmp_path)
    for time_ms in (MAX_TIME_MS + 1, 2**63 - 1):
        with pytest.raises(SerializationError, match=f"'time_ms' must be an integer in \\[0, {MAX_TIME_MS}\\]"):
            dataclasses.replace(genesis.header, time_ms=time_ms)
    # Written by hand into a block file, it does not reach `inspect`'s date formatting.
    block = h.forged_block(genesis)
    raw = json.loads(block.to_bytes())
    raw["header"]["time_ms"] = 2**63 - 1
    data = canonical_json(raw)
    (path / BLOCKS_DIR / f"00000001-{sha256_hex(data)}.json").write_bytes(data)
    with pytest.raises(LedgerError, match="time_ms"):
        Ledger.open(path)
    assert cli(["inspect", str(path)]) == 1
    assert "time_ms" in capsys.readouterr().err


# -- 14. summary.json -----------------------------------------------------------------------------


def test_truncated_summary_is_rewritten_on_resume_with_local_overrides(tmp_path, monkeypatch, median_run):
    import torchchain.experiment as experiment

    run_dir = h.copy_run(median_run[0], tmp_path / "run")
    summary_file = run_dir / "summary.json"
    text = summary_file.read_text()
    head = json.loads(text)["head"]
    summary_file.write_text(text[: len(text) // 2])

    written, devices, settings = [], [], []
    real_write, real_device, real_simulation = experiment.write_atomic, experiment.resolve_device, experiment.Simulation
    monkeypatch.setattr(
        experiment, "write_atomic", lambda path, data: (written.append(Path(path)), real_write(path, data))
    )
    monkeypatch.setattr(experiment, "resolve_device", lambda name: (devices.append(name), real_device(name))[1])

    class Spy(real_simulation):
        def __init__(self, **kwargs):
            settings.append(kwargs["settings"])
            super().__init__(**kwargs)

    monkeypatch.setattr(experiment, "Simulation", Spy)
    overrides = [f"resume={run_dir}", "device=cpu", "runtime.eval_every=2"]
    summary = run(compose_config([*TINY, *overrides]), tmp_path / "unused", overrides=overrides)

    assert summary["head"] == head and summary["rounds"] == 2
    again = json.loads(summary_file.read_text())
    assert again["head"] == head and again["model_hash"] == summary["model_hash"]
    assert run_dir / "summary.json" in written  # through the atomic writer
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not (tmp_path / "unused").exists()
    # The local overrides were applied.
    assert devices == ["cpu"]
    assert settings and settings[0].eval_every == 2
    assert verify_ledger(run_dir / "ledger", expect_head=head).height == 2


# -- 15. resume refuses protocol overrides --------------------------------------------------------


@pytest.mark.parametrize("override", ["rounds=5", "strategy.f=1", "chain.difficulty=5", "lr=0.1"])
def test_resume_with_a_protocol_override_is_refused(tmp_path, median_run, override):
    run_dir = h.copy_run(median_run[0], tmp_path / "run")
    before = _files(run_dir / "ledger" / BLOCKS_DIR)
    overrides = [f"resume={run_dir}", override]
    with pytest.raises(ConfigError, match=re.escape(override)) as info:
        run(compose_config([*TINY, *overrides]), tmp_path / "unused", overrides=overrides)
    assert "part of the chain's protocol" in str(info.value)
    assert _files(run_dir / "ledger" / BLOCKS_DIR) == before


# -- accepted updates the rules reject, and altered randomness, fail the audit ---------------------


def _run_ledger(tmp_path, median_run):
    run_dir = h.copy_run(median_run[0], tmp_path / "run")
    config = Ledger.open(run_dir / "ledger").config
    node_key, client_keys = h.run_keys(config["seed"], config["clients"])
    return run_dir / "ledger", node_key, client_keys


def _bad_payload(kind: str, model) -> bytes:
    floats = {k: v for k, v in model.items() if v.is_floating_point()}
    if kind == "nan":
        return update_to_bytes({k: torch.full_like(v, math.nan) for k, v in floats.items()})
    name = sorted(floats)[0]
    wrong = {k: torch.zeros_like(v) for k, v in floats.items()}
    wrong[name] = torch.zeros(floats[name].numel() + 1)
    return update_to_bytes(wrong)


@pytest.mark.parametrize("kind,code", [("nan", "non_finite"), ("shape", "shape_mismatch")])
def test_block_accepting_an_update_the_rules_reject_fails_audit(tmp_path, capsys, median_run, kind, code):
    path, node_key, client_keys = _run_ledger(tmp_path, median_run)
    with Ledger.open_writer(path) as ledger:
        head = ledger.head
        model = update_from_bytes(ledger.get_blob(head.header.model_hash), max_bytes=1 << 30)
        payload = _bad_payload(kind, model)
        tx = h.signed(client_keys[0], payload, rnd=head.header.round + 1, base_hash=head.hash)
        ledger.put_blob(payload)
        block = make_block(
            prev=head, round=head.header.round + 1, transactions=[tx], meta=h.round_meta([tx], head),
            model_hash=head.header.model_hash, miner=node_key, difficulty=head.header.difficulty,
            time_ms=head.header.time_ms + 1,
        )
        ledger.append(block)
    assert verify_ledger(path).head == block.hash  # well-formed, signed by the real miner

    expected = f"transaction 0 (client {tx.client[:12]}) was accepted, but the protocol rejects it: {code}"
    with pytest.raises(ReplayMismatch, match=re.escape(expected)) as info:
        audit_ledger(path)
    assert info.value.block == block_file_name(block)
    assert cli(["audit", str(path), "--expect-head", block.hash]) == 1
    assert code in capsys.readouterr().err


def test_block_with_altered_randomness_fails_audit(tmp_path, median_run):
    path, node_key, client_keys = _run_ledger(tmp_path, median_run)
    with Ledger.open_writer(path) as ledger:
        node = Node(ledger=ledger, rules=RoundRules.from_genesis(ledger.genesis), key=node_key,
                    difficulty=ledger.genesis.header.difficulty)
        head = ledger.head
        model = update_from_bytes(ledger.get_blob(head.header.model_hash), max_bytes=1 << 30)
        rnd = head.header.round + 1
        subs = [
            h.submission(key, {k: torch.zeros_like(v) + 1e-3 * i for k, v in model.items() if v.is_floating_point()},
                         rnd=rnd, base_hash=head.hash)
            for i, key in enumerate(client_keys)
        ]
        prepared = node.prepare(rnd, subs, model, time_ms=head.header.time_ms + 1)
        assert len(prepared.block.transactions) == len(client_keys)
        meta = dict(prepared.block.meta)
        meta["randomness"] = sha256_hex(b"chosen by the miner")
        block = make_block(
            prev=head, round=rnd, transactions=prepared.block.transactions, meta=meta,
            model_hash=prepared.block.header.model_hash, miner=node_key, difficulty=head.header.difficulty,
            time_ms=head.header.time_ms + 1,
        )
        for blob in prepared.blobs:
            ledger.put_blob(blob)
        ledger.append(block)
    assert verify_ledger(path).head == block.hash
    with pytest.raises(ReplayMismatch, match="recorded randomness is not derived") as info:
        audit_ledger(path)
    assert info.value.block == block_file_name(block)
