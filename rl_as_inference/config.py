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
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from rl_as_inference.algos import REGISTRY

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
    return value


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
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    unknown = sorted(set(tables) - set(REGISTRY))
    if unknown:
        raise ValueError(
            f"{label}: table [{unknown[0]}] names no algorithm; tables may be {', '.join(sorted(REGISTRY))}"
        )
    merged = {k: v for k, v in data.items() if not isinstance(v, dict)}
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
    values = apply_overrides(cls, values, dict(parse_assignment(s) for s in sets), source="--set")
    return cls(**values)


def to_toml(table: dict) -> str:
    """A flat dict of str/int/float/bool/None/tuples as TOML (None is written as a comment)."""
    lines = []
    for key, value in table.items():
        if value is None:
            lines.append(f"# {key} = (none)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
    return "\n".join(lines) + "\n"
