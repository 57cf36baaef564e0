"""Atomic checkpoints of Pyro's parameter store and optimizer state."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.distributions import constraints

__all__ = [
    "atomic_torch_save",
    "atomic_write_text",
    "get_rng_state",
    "load_error_detail",
    "load_checkpoint",
    "load_tagged",
    "restore_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "rl_as_inference.checkpoint/1"
# Constraints are stored by name (weights_only=True loads no Python objects).
_CONSTRAINTS = {
    name: obj
    for name in dir(constraints)
    if isinstance(obj := getattr(constraints, name), constraints.Constraint) and not name.startswith("_")
}


def _file_mode() -> int:
    """The mode ``open()`` gives a new file here (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: str | os.PathLike, write) -> None:
    # write a temporary file in the same folder (a rename is atomic only within one file system),
    # sync it, then rename it over ``path``: a crash leaves the old file or the new one, never a
    # torn one. A kill between mkstemp and the rename leaves a ``.NAME.*.tmp``, which the run
    # directory code removes when a run starts or resumes.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # the permissions of the run's other files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`atomic_torch_save`."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def load_tagged(
    path: str | os.PathLike, fmt: str, what: str, map_location: str | torch.device | None = None
) -> dict:
    """``torch.load`` (``weights_only=True``) of a file this library wrote as ``{"format": fmt, ...}``.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: naming ``path`` and ``what`` (e.g. "training state"), if the file is corrupt or
            foreign (not a dict with that format tag).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle/zip errors of a corrupt or foreign file
        # torch's own message would advise weights_only=False, which would let the file run code:
        # name the file and the kind of failure only
        raise ValueError(
            f"{path} is not a readable {what}: corrupt, or not written by rl_as_inference "
            f"({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"{path} is not an rl_as_inference {what} (format {fmt!r})")
    return state


def load_error_detail(exc: BaseException) -> str:
    """The line of a ``load_state_dict`` error that says what does not fit.

    torch's size-mismatch message runs to many lines under a generic heading; its second non-empty
    line names the parameter and both shapes, which is what a one-line error should carry.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__


def get_rng_state() -> dict:
    """The states of torch's (CPU and CUDA), Python's and numpy's global generators, in a form that
    loads with ``weights_only=True`` (numpy's key array becomes a tensor)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state pyro seeds)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "random": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def set_rng_state(state: dict) -> None:
    """Restore generator states saved by :func:`get_rng_state` (wherever a ``map_location`` put
    them: torch takes generator states as CPU byte tensors only)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002


def _constraint_name(c: constraints.Constraint) -> str | None:
    return next((name for name, obj in _CONSTRAINTS.items() if obj is c), None)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    optim: pyro.optim.PyroOptim | None = None,
    step: int = 0,
    extra: dict | None = None,
) -> None:
    """Write every parameter of Pyro's param store (and the optimizer's state) to ``path``, atomically.

    Args:
        path: file to write (its folder is created).
        optim: a ``pyro.optim`` optimizer whose per-parameter state is saved too.
        step: the number of optimization steps taken (restored by :func:`load_checkpoint`).
        extra: more tensors / plain values to keep (must load with ``weights_only=True``).
    """
    store = pyro.get_param_store()
    params, names = {}, {}
    for name in list(store):
        params[name] = store._params[name].detach().clone()
        names[name] = _constraint_name(store._constraints[name])
    state = {
        "format": FORMAT,
        "params": params,
        "constraints": names,
        "optim": optim.get_state() if optim is not None else None,
        "step": int(step),
        "rng": get_rng_state(),
        "extra": extra or {},
    }
    atomic_torch_save(state, path)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    optim: pyro.optim.PyroOptim | None = None,
    guide=None,
    map_location: str | torch.device | None = None,
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` (loaded with ``weights_only=True``).

    Parameters that already exist (e.g. registered by running or ``register()``-ing the guide, which
    this does when ``guide`` is given) are overwritten in place, so modules registered with
    ``pyro.module`` see the loaded values. Returns the checkpoint dict (``step``, ``rng``, ``extra``...);
    the random generators are restored only on request (:func:`set_rng_state` with ``state["rng"]``).

    Raises:
        ValueError: the file is not a checkpoint of this library, or is corrupt.
    """
    state = load_tagged(path, FORMAT, "checkpoint", map_location)
    restore_checkpoint(state, optim=optim, guide=guide)
    return state


def restore_checkpoint(state: dict, *, optim: pyro.optim.PyroOptim | None = None, guide=None) -> None:
    """Put a checkpoint dict read by :func:`load_checkpoint` (or received from another process)
    into Pyro's param store and ``optim``, as :func:`load_checkpoint` describes."""
    if guide is not None and hasattr(guide, "register"):
        guide.register()
    store = pyro.get_param_store()
    for name, value in state["params"].items():
        if name in store._params:
            with torch.no_grad():
                store._params[name].copy_(value)
            continue
        cname = state["constraints"].get(name)
        if cname is None:
            raise ValueError(
                f"parameter {name!r} has a custom constraint: create it (run the guide) before loading"
            )
        unconstrained = value.clone().requires_grad_()
        store._params[name] = unconstrained
        store._constraints[name] = _CONSTRAINTS[cname]
        store._param_to_name[unconstrained] = name
    if optim is not None and state.get("optim") is not None:
        optim.set_state(state["optim"])
