"""Every config key of every algorithm is described where the docs read it from.

The configs page (docs/configs.md) renders one table per algorithm from its config dataclass
(docs/_ext/config_keys.py): a key's meaning is the comment beside its field, its allowed values the
words of its rule. A key added without either would show a blank, so this test refuses it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from rl_as_inference.algos import REGISTRY

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _config_keys():
    spec = importlib.util.spec_from_file_location("config_keys", DOCS / "_ext" / "config_keys.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("config_keys", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("algo", sorted(REGISTRY))
def test_every_key_has_a_meaning_a_rule_and_the_dataclass_default(algo):
    docs = _config_keys().key_docs(REGISTRY[algo].config)
    fields = dataclasses.fields(REGISTRY[algo].config)
    assert [d.name for d in docs] == [f.name for f in fields]
    blank = [d.name for d in docs if not d.meaning or not d.allowed]
    assert not blank, f"{algo}: keys without a comment beside their field or a rule: {blank}"
    config = REGISTRY[algo].config()
    for doc in docs:
        value = getattr(config, doc.name)
        if isinstance(value, bool):
            assert doc.default == str(value).lower(), doc
        elif isinstance(value, (int, float)):
            assert float(doc.default) == value, doc
        elif value is None:
            assert doc.default == "unset", doc


def test_a_field_comment_is_its_meaning_and_a_group_comment_covers_the_group():
    docs = {d.name: d for d in _config_keys().key_docs(REGISTRY["mpo"].config)}
    assert docs["tau"].meaning == "Polyak rate of the critic targets"  # its own trailing comment
    assert "num_atoms atoms" in docs["v_min"].meaning  # the comment block above num_atoms, v_min, v_max
    assert docs["v_min"].meaning == docs["v_max"].meaning
    assert docs["log_every"].meaning == "env steps between metric rows"  # declared in RunSettings


def test_the_configs_page_has_a_table_for_every_algorithm():
    text = (DOCS / "configs.md").read_text()
    assert set(re.findall(r"```\{config-keys\} (\w+)", text)) == set(REGISTRY)
