"""No code path unpickles bytes (DESIGN.md invariant 2): the package's source is scanned for
every way Python and PyTorch load a pickle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import torchchain

PACKAGE = Path(torchchain.__file__).parent
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}
# torch.distributed collectives that pickle their payload.
OBJECT_COLLECTIVES = {
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "recv_object_list",  # deliberate: a name the scan looks for
    "scatter_object_list",
    "send_object_list",  # deliberate: a name the scan looks for
}


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in call.keywords)


def _pickle_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = getattr(node.func.value, "id", "") if isinstance(node.func, ast.Attribute) else ""
            if name in OBJECT_COLLECTIVES:
                found.append(name)
            elif name == "load" and owner == "torch" and not _keyword_is(node, "weights_only", True):
                found.append("torch.load without weights_only=True")
            elif name == "load" and owner in {"np", "numpy"} and _keyword_is(node, "allow_pickle", True):
                found.append("numpy.load(allow_pickle=True)")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_can_load_a_pickle(path: Path) -> None:
    uses = _pickle_uses(ast.parse(path.read_text(encoding="utf-8")))
    assert not uses, f"{path}: {uses}"


def test_the_scan_finds_each_way_of_unpickling() -> None:
    source = """
import pickle
from dill import loads
import torch, numpy as np
torch.load(f)  # deliberate: input for the scan's own test
torch.load(f, weights_only=False)  # deliberate: input for the scan's own test
torch.load(f, weights_only=True)
np.load(f, allow_pickle=True)
dist.broadcast_object_list(objs)  # deliberate: input for the scan's own test
"""
    assert _pickle_uses(ast.parse(source)) == [
        "import pickle",
        "from dill import ...",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "numpy.load(allow_pickle=True)",
        "broadcast_object_list",
    ]
