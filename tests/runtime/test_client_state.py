"""Clients' momentum and codec residuals live on disk between the rounds they train in."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save as st_save

import torchchain.runtime.simulation as simulation
from torchchain.chain.crypto import SigningKey
from torchchain.data import DataSplit
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.runtime.checkpoint import checkpoint_path, load_checkpoint
from torchchain.runtime.client import Client
from torchchain.runtime.client_state import ClientStates

from composing import FAST, compose_config, run_stopped_before

# Sampled clients with momentum and a top-k codec: a client's buffers and residual must come
# back, exactly, the next time the chain samples it, rounds later.
SETTINGS = [*FAST, "rounds=6", "clients=8", "clients_per_round=3", "momentum=0.9", "lr=0.05", "codec=topk"]


def _in_memory(monkeypatch) -> None:
    """Keep every client's state in memory, as before the states moved to disk."""
    monkeypatch.setattr(simulation, "ClientStates", lambda folder: ClientStates(None))


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        _in_memory(patch)
        patch.setattr(time, "time", lambda: 1_800_000_000.0)
        return run(compose_config(SETTINGS), tmp_path_factory.mktemp("memory"))


def _client(index: int) -> Client:
    return Client(index=index, key=SigningKey.generate(), data=DataSplit(features=torch.zeros(1, 2), targets=torch.zeros(1)))


def test_states_on_disk_give_the_same_run_as_states_in_memory(tmp_path, in_memory):
    on_disk = run(compose_config(SETTINGS), tmp_path)
    assert on_disk["model_hash"] == in_memory["model_hash"]


def test_only_files_the_head_or_its_parent_names_stay(tmp_path):
    run(compose_config(SETTINGS), tmp_path)
    folder = tmp_path / "checkpoints"
    checkpoints = sorted(folder.glob("block_*.safetensors"))
    assert len(checkpoints) == 2
    named = set()
    for path in checkpoints:
        named |= set(load_checkpoint(path)["clients"].values())
    on_disk = {p.name for p in (folder / "clients").iterdir()}
    assert on_disk == named
    # One file per client that has trained, plus the older files of the head's 3 clients
    # that the parent's checkpoint still names.
    assert 3 <= len(on_disk) <= 8 + 3


def test_resume_reads_states_back_from_disk(tmp_path, monkeypatch, in_memory):
    run_stopped_before(4, SETTINGS, tmp_path, monkeypatch)
    resumed = run(compose_config([*FAST, f"resume={tmp_path}"]), tmp_path / "unused")
    assert resumed["model_hash"] == in_memory["model_hash"]


def test_a_crash_while_writing_client_files_loses_nothing(tmp_path, monkeypatch, in_memory):
    # The process dies after the second client file of round 3 is written, before the
    # checkpoint that would name them: the head's checkpoint still names files on disk.
    import torchchain.runtime.client_state as client_state

    original = client_state.write_atomic
    written = []

    def write_atomic(path, data):
        if len(written) == 2 + 3 * 2:
            raise KeyboardInterrupt
        written.append(path)
        original(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(client_state, "write_atomic", write_atomic)
        with pytest.raises(KeyboardInterrupt):
            run(compose_config(SETTINGS), tmp_path)
    resumed = run(compose_config([*FAST, f"resume={tmp_path}"]), tmp_path / "unused")
    assert resumed["model_hash"] == in_memory["model_hash"]


def test_memory_holds_only_the_clients_of_this_round(tmp_path):
    states = ClientStates(tmp_path)
    clients = [_client(i) for i in range(4)]
    states.checkout(clients[:2])
    for c in clients[:2]:
        c.momentum_buffers["w"] = torch.full((3,), float(c.index))
    states.commit("a" * 64)
    assert all(not c.momentum_buffers and not c.codec_residual for c in clients)
    assert states.manifest() == {"0": f"client0_{'a' * 16}.safetensors", "1": f"client1_{'a' * 16}.safetensors"}
    states.checkout([clients[1], clients[3]])
    assert torch.equal(clients[1].momentum_buffers["w"], torch.full((3,), 1.0))
    assert clients[3].momentum_buffers == {}


def test_a_client_with_no_state_gets_no_file(tmp_path):
    states = ClientStates(tmp_path)
    states.checkout([_client(0)])
    states.commit("b" * 64)
    assert states.manifest() == {}
    assert list(tmp_path.iterdir()) == []


def test_in_memory_states_stay_in_the_clients(tmp_path):
    states = ClientStates(None)
    client = _client(0)
    client.momentum_buffers = {"w": torch.ones(2)}
    states.checkout([client])
    states.commit("c" * 64)
    assert torch.equal(client.momentum_buffers["w"], torch.ones(2))
    assert states.manifest() == {}


@pytest.mark.parametrize(
    "manifest",
    [
        {"1": f"client0_{'a' * 16}.safetensors"},  # another client's file
        {"0": "../../etc/passwd"},  # a path out of the folder
        {"0": 7},
        {"x": f"client0_{'a' * 16}.safetensors"},
        {"9": f"client9_{'a' * 16}.safetensors"},  # no such client here
    ],
)
def test_a_manifest_naming_the_wrong_file_is_refused(tmp_path, manifest):
    with pytest.raises(ConfigError, match="cannot resume"):
        ClientStates(tmp_path).load_manifest(manifest, clients={0, 1})


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 7, b"not safetensors at all", st_save({"other/w": torch.ones(1)}), st_save({"momentum/": torch.ones(1)})],
    ids=["empty", "short", "garbage", "other-kind", "no-name"],
)
def test_a_damaged_client_file_is_a_clear_error(tmp_path, data):
    name = f"client0_{'a' * 16}.safetensors"
    (tmp_path / name).write_bytes(data)
    states = ClientStates(tmp_path)
    states.load_manifest({"0": name}, clients={0})
    with pytest.raises(ConfigError, match=name):
        states.checkout([_client(0)])


def test_a_missing_client_file_is_a_clear_error(tmp_path):
    states = ClientStates(tmp_path)
    name = f"client0_{'a' * 16}.safetensors"
    states.load_manifest({"0": name}, clients={0})
    with pytest.raises(ConfigError, match="missing or malformed"):
        states.checkout([_client(0)])


def test_a_checkpoint_that_holds_client_tensors_is_refused(tmp_path):
    # The older layout kept every client's buffers inside the checkpoint; such a file is not
    # taken up silently with the buffers dropped.
    path = checkpoint_path(tmp_path, "d" * 64)
    meta = '{"block": "' + "d" * 64 + '", "attack": {}, "clients": {}}'
    path.write_bytes(st_save({"momentum/0/w": torch.ones(1)}, metadata={"torchchain": meta}))
    with pytest.raises(ConfigError, match="unexpected tensor"):
        load_checkpoint(path)
