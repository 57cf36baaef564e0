"""Environment ids read from files: registered names only, never code to import.

Gymnasium's ``make("module:Env")`` imports ``module`` before it looks the id up, so an id taken
from a config file or a run directory could run code shipped next to it (a ``module.py`` in the
directory the run is opened from). Ids read from files therefore go through :func:`check_env_id`:
a ported id or one already in Gymnasium's registry, and no ``module:`` prefix. Only an id the user
types on the command line or passes in Python may carry that prefix.
"""

from __future__ import annotations

import gymnasium as gym

from .registry import PORTED

__all__ = ["check_env_id"]


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
    if env_id not in PORTED and env_id not in gym.registry:
        raise ValueError(f"{source}={env_id!r} is not a registered Gymnasium id; ported ids: {ported}")
    return env_id
