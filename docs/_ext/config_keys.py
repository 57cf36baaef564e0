"""The config keys of each training algorithm, read from its config dataclass, as a docs table.

Each key's meaning is the comment written beside its field (or on the comment lines right above
it) in the dataclass that last declares it, its default is the dataclass default, and its allowed
values are the words of its rule in ``rl_as_inference.algos.settings.RULES``. The page
``configs.md`` shows one table per algorithm with the ``config-keys`` directive, so the table can
never drift from the code; ``tests/test_docs_configs.py`` keeps every key described.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its name, default (as TOML would write it), allowed values and meaning."""

    name: str
    default: str
    allowed: str
    meaning: str


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment, for the fields annotated in ``cls``'s own body.

    A field's own trailing comment describes it; otherwise the block of comment lines above it,
    which also describes the fields that follow it without a blank line (a group such as
    ``num_atoms``, ``v_min``, ``v_max`` under one comment).
    """
    own = set(cls.__dict__.get("__annotations__", {}))
    lines = inspect.getsource(cls).splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if tok.type == tokenize.COMMENT and not tok.line.strip().startswith("#"):
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    comments: dict[str, str] = {}
    block: list[str] = []
    in_block = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            block, in_block = [], False
        elif stripped.startswith("#"):
            if not in_block:
                block, in_block = [], True
            block.append(stripped.lstrip("#").strip())
        else:
            in_block = False
            name = stripped.split(":", 1)[0]
            if line.startswith("    ") and not line.startswith("     ") and name in own:
                text = trailing.get(number) or " ".join(block)
                if text:
                    comments[name] = text
            elif not line.startswith("     "):
                block = []
    return comments


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _as_written(name: str, value: Any) -> str:
    """The default as the run's ``config.toml`` writes it (:func:`rl_as_inference.config.to_toml`);
    None, which that file leaves as a comment, reads "unset"."""
    from rl_as_inference.config import to_toml

    return "unset" if value is None else to_toml({name: value}).strip().split(" = ", 1)[1]


def key_docs(config_cls: type) -> list[KeyDoc]:
    """Every field of an algorithm's config dataclass, in declaration order."""
    from rl_as_inference.algos.settings import RULES

    comments: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):  # the most derived declaration wins
        if dataclasses.is_dataclass(klass) and klass is not object:
            comments.update(_field_comments(klass))
    out = []
    for field in dataclasses.fields(config_cls):
        rule = RULES.get(field.name)
        out.append(
            KeyDoc(
                field.name,
                _as_written(field.name, _default(field)),
                rule.allowed if rule else "",
                comments.get(field.name, ""),
            )
        )
    return out


def setup(app):  # pragma: no cover - run by Sphinx
    from docutils import nodes
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList

    from rl_as_inference.algos import REGISTRY

    class ConfigKeys(Directive):
        """``config-keys ALGO``: the table of ALGO's config keys."""

        required_arguments = 1

        def run(self):
            algo = self.arguments[0]
            if algo not in REGISTRY:
                raise self.error(f"config-keys: unknown algorithm {algo!r}; known: {sorted(REGISTRY)}")
            rows = [".. list-table::", "   :header-rows: 1", "   :widths: 18 14 25 43", ""]
            rows += ["   * - key", "     - default", "     - allowed", "     - meaning"]
            for doc in key_docs(REGISTRY[algo].config):
                rows += [f"   * - ``{doc.name}``", f"     - ``{doc.default}``"]
                rows += [f"     - {_rst(doc.allowed)}", f"     - {_rst(doc.meaning)}"]
            container = nodes.container()
            self.state.nested_parse(
                StringList(rows, source=f"config-keys {algo}"), self.content_offset, container
            )
            return container.children

    class RecipeTable(Directive):
        """``recipe-table``: every shipped recipe, its default algorithm and the tables it sets."""

        def run(self):
            from rl_as_inference import config

            rows = [".. list-table::", "   :header-rows: 1", ""]
            rows += ["   * - environment", "     - default algorithm", "     - settings for"]
            for env_id in config.recipe_ids():
                recipe = config.load_recipe(env_id)
                tables = ", ".join(f"``{name}``" for name in recipe if isinstance(recipe[name], dict))
                rows += [
                    f"   * - ``{env_id}``",
                    f"     - ``{recipe.get('default_algo', '')}``",
                    f"     - {tables}",
                ]
            container = nodes.container()
            self.state.nested_parse(StringList(rows, source="recipe-table"), self.content_offset, container)
            return container.children

    app.add_directive("config-keys", ConfigKeys)
    app.add_directive("recipe-table", RecipeTable)
    return {"parallel_read_safe": True}


def _rst(text: str) -> str:
    """Plain text made safe for RST: the characters that start inline markup are escaped."""
    for char in ("\\", "*", "`", "|", "_"):
        text = text.replace(char, "\\" + char)
    return text or "(no description)"
