"""Dependency direction (attacks -> dp -> secagg) and safe deserialization, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_UPWARD = {"secagg/cli/__init__.py", "secagg/cli/options.py", "secagg/cli/compose.py",
                  "secagg/cli/render.py", "secagg/__main__.py"}  # the composition root
FORBIDDEN = {"secagg": {"dp", "attacks"}, "dp": {"attacks"}, "attacks": set()}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _is_unsafe_torch_load(node: ast.AST) -> bool:
    """``torch.load(...)`` without ``weights_only=True`` (``safetensors.torch.load`` is fine)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"):
        return False
    return not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)


def test_torch_load_detector_catches_the_unsafe_form():
    assert _is_unsafe_torch_load(ast.parse("torch.load(f)").body[0].value)
    assert not _is_unsafe_torch_load(ast.parse("torch.load(f, weights_only=True)").body[0].value)
    assert not _is_unsafe_torch_load(ast.parse("safetensors.torch.load(b)").body[0].value)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED_UPWARD:
            continue
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{rel} imports {sorted(bad)}")
    assert not offenders, offenders


# modules that import pickle only to subclass pickle.Unpickler with a find_class that admits the exact
# numpy array constructors (CIFAR-10's pickled batches; tests/test_datasets.py shows others refused)
RESTRICTED_UNPICKLERS = {"secagg/data/cifar.py"}


def _calls_pickle_load(path: Path) -> bool:
    """``pickle.load(...)``/``pickle.loads(...)``: the unrestricted form."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in ("load", "loads") and isinstance(node.func.value, ast.Name)
               and node.func.value.id == "pickle" for node in ast.walk(ast.parse(path.read_text())))


def test_no_code_executing_deserializers():
    offenders = []
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in RESTRICTED_UNPICKLERS:
                if _calls_pickle_load(path) or {"marshal", "dill", "cloudpickle"} & _imports(path):
                    offenders.append(f"{rel}: unrestricted unpickling")
            elif {"pickle", "marshal", "dill", "cloudpickle"} & _imports(path):
                offenders.append(rel)
            for node in ast.walk(ast.parse(path.read_text())):
                if _is_unsafe_torch_load(node):
                    offenders.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} torch.load")
    assert not offenders, offenders


def test_flower_is_imported_only_by_its_integration_and_the_example_has_no_pickle():
    """``import secagg`` never needs flwr (an extra); nothing on the Flower path deserializes by
    executing code (arrays load with ``allow_pickle=False``; secagg's bytes are msgpack)."""
    offenders = []
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "flwr" in _imports(path) and not rel.startswith("secagg/integrations/flower/"):
                offenders.append(rel)
    for path in sorted((ROOT / "examples").rglob("*.py")):
        if {"pickle", "marshal", "dill", "cloudpickle"} & _imports(path):
            offenders.append(path.relative_to(ROOT).as_posix())
        text = path.read_text()
        if "allow_pickle=True" in text:
            offenders.append(f"{path.relative_to(ROOT).as_posix()}: allow_pickle=True")
    assert not offenders, offenders
