"""SIGKILL a real training process at random instants: the ledger verifies and the run resumes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from torchchain.chain.verify import verify_ledger

from composing import ROOT

ARGS = ["rounds=8", "clients=5", "chain.difficulty=12", "runtime.progress=false", "momentum=0.5", "attack=signflip"]
KILLS = 20


def _train(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_instants_then_verify_and_resume(tmp_path):
    reference_dir = tmp_path / "reference"
    proc = _train(f"hydra.run.dir={reference_dir}", *ARGS)
    _wait_for(reference_dir / "config.yaml", proc)
    started = time.monotonic()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    span = time.monotonic() - started  # data loading, genesis, every round and the summary
    reference = json.loads((reference_dir / "summary.json").read_text())

    rng = random.Random(20261125)
    heights = []
    for i in range(KILLS):
        run_dir = tmp_path / f"kill{i:02d}"
        proc = _train(f"hydra.run.dir={run_dir}", *ARGS)
        _wait_for(run_dir / "config.yaml", proc)
        time.sleep(rng.uniform(0.0, span))
        proc.kill()
        proc.wait()
        ledger = run_dir / "ledger"
        if any((ledger / "blocks").glob("*.json")):
            heights.append(verify_ledger(ledger).height)
        else:
            heights.append(-1)  # killed before the genesis block was whole
        resumed = _train(f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume-invocations' / str(i)}")
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["model_hash"] == reference["model_hash"], f"kill {i} at height {heights[-1]}"
        assert verify_ledger(ledger).height == 8
        # Leftover temporary files from the kill are cleaned up when the ledger is opened.
        assert not list(ledger.rglob(".tmp-*")) and not list((run_dir / "checkpoints").glob(".tmp-*"))
    # The kills must have landed at different stages of the run, not all before or after it.
    assert len(set(heights)) >= 4, heights
