"""Start a test's torch.distributed ranks as real processes on loopback; fail, never hang."""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Sequence

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(
    worker: Callable[..., None], args: Sequence[object], *, nprocs: int, limit: float, preload: str, what: str
) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` processes and wait at most ``limit`` seconds.

    A fork server imports torch and ``preload`` once and forks every rank from it: a fresh
    interpreter per rank would pay those imports (seconds) per rank. (The preload names installed
    modules: the server does not see the sys.path pytest extends.) Processes still alive at the
    end are terminated, then killed, whatever happened.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload([preload, "pytest"])
        start_method = "forkserver"
    else:
        start_method = "spawn"
    context = mp.start_processes(worker, args=tuple(args), nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + limit
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() >= deadline:
                pytest.fail(f"{what}: processes still running after {limit:g} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
