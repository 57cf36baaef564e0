"""Run configuration: per-environment recipes shipped as TOML, overrides, and a TOML writer.

A recipe (``rl_as_inference/recipes/<env id>.toml``) names the default algorithm and holds one table
per algorithm whose keys are the fields of that algorithm's config dataclass. ``--config FILE`` and
``--set key=value`` override them; unknown keys and ill-typed values are errors that name the key.

A ``--config`` file may hold top-level keys, which apply to whichever algorithm runs, and tables
named after algorithms (``[sac]``, ``[mpo]``...): the running algorithm's table overrides the
top-level keys, the other algorithms' tables are skipped and reported as such (:func:`build_config`'s
``notes``), and a table named after no algorithm is an error, as a typo would be.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from rl_as_inference.algos import REGISTRY
from rl_as_inference.algos.settings import ENV_KWARGS

__all__ = [
    "apply_overrides",
    "build_config",
    "RECIPE_FAMILIES",
    "load_recipe",
    "recipe_family",
    "parse_assignment",
    "read_toml",
    "recipe_ids",
    "to_toml",
]


def recipe_ids() -> list[str]:
    """Environment ids with a shipped recipe."""
    folder = resources.files("rl_as_inference") / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


# Families of Gymnasium ids that share defaults when an id has no recipe of its own, by the module
# prefix of their registry entry point: recipes/families/<family>.toml.
RECIPE_FAMILIES = {"mujoco": "gymnasium.envs.mujoco."}


def recipe_family(env_id: str) -> str | None:
    """The family (:data:`RECIPE_FAMILIES`) whose defaults ``env_id`` takes, or None.

    Only ids without a recipe of their own belong to one: MuJoCo tasks in Gymnasium's registry
    (``Hopper-v5``, ``HalfCheetah-v5``, ...) take ``recipes/families/mujoco.toml``.
    """
    if (_recipes() / f"{env_id}.toml").is_file():
        return None
    import gymnasium as gym

    spec = gym.registry.get(env_id)
    entry = spec.entry_point if spec is not None and isinstance(spec.entry_point, str) else ""
    return next((name for name, prefix in RECIPE_FAMILIES.items() if entry.startswith(prefix)), None)


def _recipes():
    return resources.files("rl_as_inference") / "recipes"


def load_recipe(env_id: str) -> dict:
    """The shipped recipe of ``env_id``: its own file, else its family's defaults
    (:func:`recipe_family`), else an empty recipe."""
    path = _recipes() / f"{env_id}.toml"
    if not path.is_file():
        family = recipe_family(env_id)
        if family is None:
            return {}
        path = _recipes() / "families" / f"{family}.toml"
    return tomllib.loads(path.read_text())


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of a config field, or a ValueError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is tuple:
        items = value
        if isinstance(value, str):
            items = [v for v in value.strip("[]() ").split(",") if v.strip()]
        if not isinstance(items, list | tuple):
            raise ValueError(f"{key} must be a list such as [256, 256], got {value!r}")
        inner = args[0] if args else str
        return tuple(_coerce(key, v, inner) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)  # exactly, where a float would round a large seed
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        return str(value)
    if origin is dict or hint is dict:
        table = _toml_value(key, value) if isinstance(value, str) else value
        if not isinstance(table, dict):
            raise ValueError(f"{key} must be a table such as {{is_slippery = false}}, got {value!r}")
        return dict(table)
    return value


def _toml_value(key: str, text: str) -> Any:
    """``text`` read as one TOML value (``{a = 1}``, ``[1, 2]``, ``false``, ``"s"``, ``3.5``)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        raise ValueError(f"{key}: {text!r} is not a TOML value such as {{is_slippery = false}}") from None


# Config keys whose value is a table (a dict), told apart from the algorithm tables of a --config file
TABLE_KEYS = ("env_kwargs",)


def _dotted_sets(values: dict, sets: dict) -> dict:
    """``--set`` values with ``env_kwargs.NAME=VALUE`` folded into the ``env_kwargs`` table (merged
    onto the one of ``values``); VALUE is read as TOML (``false``, ``9.81``, ``[1, 2]``), else as a
    string (``map_name=8x8``)."""
    out: dict = {}
    for key, value in sets.items():
        table, dot, name = key.partition(".")
        if not dot or table not in TABLE_KEYS:
            out[key] = value
            continue
        if not name.isidentifier():
            raise ValueError(f"--set {key}: {name!r} is not a keyword argument name")
        try:
            parsed = _toml_value(key, value)
        except ValueError:
            parsed = value  # a bare word: the string itself
        base = out.get(table, values.get(table, {}))
        base = _coerce(table, base, dict) if isinstance(base, str) else base
        out[table] = {**base, name: parsed}
    return out


def apply_overrides(cls, values: dict, overrides: dict, *, source: str) -> dict:
    """Merge ``overrides`` into ``values``, checking every key against the fields of ``cls``."""
    types_ = _field_types(cls)
    merged = dict(values)
    for key, value in overrides.items():
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(types_))}"
            raise ValueError(f"{source}: unknown key {key!r} for {cls.__name__}{hint}")
        merged[key] = _coerce(key, value, types_[key])
    return merged


def parse_assignment(text: str) -> tuple[str, str]:
    """``"key=value"`` -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {text!r}")
    return key.strip(), value.strip()


def read_toml(path: Path, label: str) -> dict:
    """The TOML file ``path`` as a dict; a ValueError starting with ``label`` if it is not valid TOML."""
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{label}: not valid TOML ({exc})") from None


def _config_file_tables(data: dict, algo: str, label: str, notes: list[str] | None) -> dict:
    """The keys of a ``--config`` file that apply to ``algo``: top level, then its own table."""
    tables = {k: v for k, v in data.items() if isinstance(v, dict) and k not in TABLE_KEYS}
    for name, table in tables.items():
        for key in TABLE_KEYS:
            if key in table:
                raise ValueError(
                    f"{label}: [{name}] sets {key}, which belongs to the run (the env is built before "
                    f"the algorithm is chosen); put it at the top of the file, before any table"
                )
    unknown = sorted(set(tables) - set(REGISTRY))
    if unknown:
        raise ValueError(
            f"{label}: table [{unknown[0]}] names no algorithm; tables may be {', '.join(sorted(REGISTRY))}"
        )
    merged = {k: v for k, v in data.items() if k not in tables}
    merged |= tables.get(algo, {})
    ignored = sorted(set(tables) - {algo})
    if ignored and notes is not None:
        used = f"used [{algo}]" if algo in tables else f"no [{algo}] table"
        notes.append(f"{label}: {used}; ignored {', '.join(f'[{t}]' for t in ignored)} (another algorithm)")
    return merged


def build_config(
    cls,
    env_id: str,
    algo: str,
    *,
    file: str | Path | None = None,
    sets: list[str] = (),
    notes: list[str] | None = None,
):
    """The resolved config: dataclass defaults < recipe < ``--config`` file < ``--set`` values.

    Args:
        notes: a list that receives one line per thing the user should know (tables of the
            ``--config`` file that were skipped because they belong to another algorithm).

    Raises:
        ValueError: one line naming the file, key or value (unknown keys, ill-typed or disallowed
            values, a table named after no algorithm).
    """
    values: dict = {}
    recipe = load_recipe(env_id).get(algo, {})
    family = recipe_family(env_id)
    name = f"families/{family}.toml" if family else f"{env_id}.toml"
    values = apply_overrides(cls, values, recipe, source=f"recipe {name} [{algo}]")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ValueError(f"--config {file}: no such file")
        data = read_toml(path, f"--config {file}")
        table = _config_file_tables(data, algo, f"--config {file}", notes)
        values = apply_overrides(cls, values, table, source=f"--config {file}")
    overrides = _dotted_sets(values, dict(parse_assignment(s) for s in sets))
    values = apply_overrides(cls, values, overrides, source="--set")
    return cls(**values)


def run_env_kwargs(file: str | Path | None = None, sets: list[str] = ()) -> dict:
    """The env's constructor arguments of a run before its algorithm is chosen (the spaces, which
    choose it, may depend on them): the ``env_kwargs`` table at the top of the ``--config`` file,
    then ``--set env_kwargs={...}`` and ``--set env_kwargs.NAME=VALUE``, as :func:`build_config`
    resolves them."""
    values: dict = {}
    if file is not None and Path(file).is_file():
        data = read_toml(Path(file), f"--config {file}")
        if "env_kwargs" in data:
            values["env_kwargs"] = _coerce("env_kwargs", data["env_kwargs"], dict)
    given = {k: v for k, v in (parse_assignment(s) for s in sets) if k.partition(".")[0] == "env_kwargs"}
    for key, value in _dotted_sets(values, given).items():
        values[key] = _coerce(key, value, dict)
    env_kwargs = values.get("env_kwargs", {})
    if not ENV_KWARGS.ok(env_kwargs):
        raise ValueError(f"env_kwargs={env_kwargs!r} is not allowed; use {ENV_KWARGS.allowed}")
    return env_kwargs


def to_toml(table: dict) -> str:
    """A dict of str/int/float/bool/None/tuples/tables as TOML (None is written as a comment, a
    table inline: ``env_kwargs = {is_slippery = false}``)."""
    lines = []
    for key, value in table.items():
        if value is None:
            lines.append(f"# {key} = (none)")
        else:
            lines.append(f"{key} = {_toml_literal(value)}")
    return "\n".join(lines) + "\n"


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return f"[{', '.join(_toml_literal(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_literal(key)
