"""Environment ids read from files: registered names only, never code to import.

Gymnasium's ``make("module:Env")`` imports ``module`` before it looks the id up, so an id taken
from a config file or a run directory could run code shipped next to it (a ``module.py`` in the
directory the run is opened from). Ids read from files therefore go through :func:`check_env_id`:
a ported id or one already in Gymnasium's registry, and no ``module:`` prefix. Only an id the user
types on the command line or passes in Python may carry that prefix.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

import gymnasium as gym

from .registry import PORTED, has_torch_env, register, registered_ids

__all__ = ["check_env_id", "import_env_module"]


def _closest(env_id: str) -> str:
    known = sorted({*PORTED, *registered_ids(), *gym.registry})
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
    return f"closest: {', '.join(close)}; " if close else ""


def import_env_module(env_id: str) -> str:
    """``module:Name`` as typed by a user: import ``module`` and return the id it makes known.

    ``Name`` is a Gymnasium id the module registers on import (as ``gymnasium.make`` reads the
    prefix), a ``gymnasium.Env`` subclass in the module, which is registered with Gymnasium under
    ``Name`` (the model-free algorithms then step it as Gymnasium's own env; its episodes end only
    where the class ends them), or a ``FunctionalEnv`` factory in the module, which is registered
    under ``Name`` with :func:`rl_as_inference.envs.register`. Ids read from files never come here
    (:func:`check_env_id` refuses the prefix): importing runs the module's code.

    Raises:
        ValueError: naming the module or the name, if the import fails or the name is unknown.
    """
    module_name, _, name = env_id.rpartition(":")
    if not module_name or not name:
        raise ValueError(f"env={env_id!r} is not 'module:Name'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # as `python -m` does (and uvicorn for its module:app): a module next to the user is found
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"env={env_id!r}: cannot import {module_name!r} ({exc})") from None
    if has_torch_env(name) or name in gym.registry:
        return name
    factory = getattr(module, name, None)
    if isinstance(factory, type) and issubclass(factory, gym.Env):
        # a Gymnasium env class, not a torch one: Gymnasium builds it, as for a registered id
        gym.register(name, entry_point=factory)
        return name
    if callable(factory):
        register(name, factory, override=True)
        return name
    raise ValueError(
        f"env={env_id!r}: importing {module_name!r} registered no id {name!r} and it has no factory "
        f"of that name"
    )


def check_env_id(env_id: object, *, source: str = "env") -> str:
    """``env_id`` if it is a ported or registered Gymnasium id without a ``module:`` prefix.

    Args:
        env_id: the id to check.
        source: what to call it in the error (e.g. ``"checkpoint.pt's env"``).

    Raises:
        ValueError: naming ``env_id`` and the ported ids, if it is not a string, carries a module
            to import, or is in neither the ported ids nor Gymnasium's registry.
    """
    ported = ", ".join(sorted(PORTED))
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"{source}={env_id!r} is not an environment id; ported ids: {ported}")
    if ":" in env_id:
        raise ValueError(
            f"{source}={env_id!r} names a module to import ('module:Env'), which ids read from files may "
            f"not do: use a registered id (ported: {ported})"
        )
    if not has_torch_env(env_id) and env_id not in gym.registry:
        raise ValueError(
            f"{source}={env_id!r} is not a registered Gymnasium id; {_closest(env_id)}ported ids: {ported} "
            "(a package's ids need its import: --env package:ID, also with --resume and for rlai "
            "evaluate and inspect; a torch env of yours: envs.register)"
        )
    return env_id
