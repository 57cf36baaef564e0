"""Every public name has a docstring (the project's standard), checked over each module's __all__."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "rl_as_inference",
    "rl_as_inference.envs",
    "rl_as_inference.envs.base",
    "rl_as_inference.envs.tabular",
    "rl_as_inference.envs.vector",
    "rl_as_inference.envs.gymnasium_adapter",
    "rl_as_inference.envs.registry",
    "rl_as_inference.envs.ids",
    "rl_as_inference.ledger",
    "rl_as_inference.models",
    "rl_as_inference.guides",
    "rl_as_inference.guides.normalization",
    "rl_as_inference.elbo",
    "rl_as_inference.fit",
    "rl_as_inference.exact",
    "rl_as_inference.bellman",
    "rl_as_inference.critics",
    "rl_as_inference.replay",
    "rl_as_inference.baselines",
    "rl_as_inference.checkpoint",
    "rl_as_inference.config",
    "rl_as_inference.runs",
    "rl_as_inference.algos.sac",
    "rl_as_inference.algos.svi",
    "rl_as_inference.algos.em",
    "rl_as_inference.algos.mpo",
    "rl_as_inference.algos.vmpo",
    "rl_as_inference.algos.collect",
    "rl_as_inference.trust_region",
    "rl_as_inference.temperature",
    "rl_as_inference.resume",
    "rl_as_inference.diagnostics",
]


def public_objects():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        assert module.__doc__, f"module {module_name} has no docstring"
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj


@pytest.mark.parametrize(
    "qualname, obj", list(public_objects()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_name_has_a_docstring(qualname, obj):
    assert obj.__doc__ and obj.__doc__.strip(), f"{qualname} has no docstring of its own"
