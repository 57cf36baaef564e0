"""Every public name has a docstring, and the API reference documents every public module.

The modules are discovered, not listed: every module of the package (models and guides included)
that declares ``__all__``. Each must have a docstring, so must every class and function it
exports, and ``docs/api.md`` must render it with ``automodule``, unless its package re-exports all
of its names and is rendered itself.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import rl_as_inference

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _modules() -> list[str]:
    names = ["rl_as_inference"]
    for package in (
        rl_as_inference,
        importlib.import_module("rl_as_inference.models"),
        importlib.import_module("rl_as_inference.guides"),
    ):
        prefix = package.__name__ + "."
        names += [
            m.name
            for m in pkgutil.walk_packages(package.__path__, prefix)
            if m.name != "rl_as_inference.__main__"
        ]
    names += ["rl_as_inference.models", "rl_as_inference.guides"]
    return sorted(n for n in set(names) if hasattr(importlib.import_module(n), "__all__"))


MODULES = _modules()


def public_objects():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        assert module.__doc__, f"module {module_name} has no docstring"
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj


def test_the_discovery_finds_the_modules_it_must():
    for name in (
        "rl_as_inference.exact",
        "rl_as_inference.algos.mpo",
        "rl_as_inference.models",
        "rl_as_inference.guides.policies",
        "rl_as_inference.envs.base",
    ):
        assert name in MODULES, name


@pytest.mark.parametrize(
    "qualname, obj", list(public_objects()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_name_has_a_docstring(qualname, obj):
    assert obj.__doc__ and obj.__doc__.strip(), f"{qualname} has no docstring of its own"


@pytest.mark.parametrize("module_name", MODULES)
def test_the_api_reference_renders_every_public_module(module_name):
    rendered = set(re.findall(r"^\.\. automodule:: (\S+)$", API.read_text(), re.M))
    if module_name in rendered:
        return
    parent_name = module_name.rpartition(".")[0]
    parent = importlib.import_module(parent_name)
    missing = sorted(set(importlib.import_module(module_name).__all__) - set(getattr(parent, "__all__", ())))
    assert parent_name in rendered and not missing, (
        f"docs/api.md renders neither {module_name} nor a package exporting all its names "
        f"({parent_name} lacks {missing})"
    )
