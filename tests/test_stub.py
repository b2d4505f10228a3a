"""flas_cpp/_core.pyi, the type stub written by hand beside the bindings, names every attribute the
extension binds on flas.h's records, in flas.h's order: a field added to a struct and its binding
but not to the stub fails here."""

from __future__ import annotations

import ast
import importlib.resources

from flas_cpp._native import core


def stub_attributes() -> dict[str, list[str]]:
    tree = ast.parse(importlib.resources.files("flas_cpp").joinpath("_core.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = []
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.append(item.target.id)
                elif isinstance(item, ast.FunctionDef) and any(
                        isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list):
                    names.append(item.name)
            out[node.name] = names
    return out


def test_the_stub_names_every_bound_attribute():
    stub = stub_attributes()
    checked = 0
    for name, attrs in stub.items():
        cls = getattr(core(), name, None)
        assert cls is not None, f"_core.pyi declares {name}, which the extension does not define"
        if hasattr(cls, "__members__"):  # an enum (Finish): its values, not a record
            continue
        bound = [n for n, a in vars(cls).items() if isinstance(a, property)]
        if bound or attrs:
            assert attrs == bound, f"{name}: the stub says {attrs}, the extension binds {bound}"
            checked += 1
    assert checked >= 7  # ModelParams, SamplingParams, Request, Result, Stats, MemoryRow, FlowInfo
