"""Turn SIGINT, SIGTERM and SIGHUP during training into a final checkpoint and a clean exit.

A signal that arrives while a training loop runs must not kill it mid-update (the last checkpoint
could be a whole interval old) nor print a traceback. :func:`deferred_signals` installs handlers
that only record the first signal; the loop's :class:`~rl_as_inference.resume.Checkpointer` looks
at :func:`pending` at the top of every iteration, where the state is consistent, writes the state
and raises :class:`TrainingInterrupted`. A second signal of the same kind restores the default
behaviour first, so pressing Ctrl-C twice still stops a run that is stuck.

Handlers can be installed only from the main thread (a Python rule); elsewhere the context manager
does nothing and signals keep their default effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["HANDLED", "TrainingInterrupted", "clear", "deferred_signals", "pending", "raise_if_pending"]

# SIGHUP does not exist on Windows
HANDLED = tuple(
    s for s in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)

_pending: int | None = None


class TrainingInterrupted(SystemExit):
    """A signal stopped training after its state was saved.

    A :class:`SystemExit` so that a script that does not catch it exits with the conventional code
    ``128 + signum`` (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP) without a traceback.

    Attributes:
        signum: the signal's number; ``signame`` its name (``"SIGTERM"``).
        path: the training-state file written (None if the run had nowhere to save).
        env_steps: the env steps (or optimizer steps, for ``fit``) the saved state has reached.
    """

    def __init__(self, signum: int, path: Path | None, env_steps: int, unit: str = "env steps"):
        self.signum, self.path, self.env_steps, self.unit = signum, path, env_steps, unit
        self.signame = signal.Signals(signum).name
        super().__init__(128 + signum)

    def __str__(self) -> str:
        if self.path is None:
            return (
                f"{self.signame}: stopped at {self.env_steps} {self.unit} (nothing saved: no checkpoint path)"
            )
        return f"{self.signame}: saved {self.path} at {self.env_steps} {self.unit}"


def pending() -> int | None:
    """The number of the first signal received inside :func:`deferred_signals`, or None."""
    return _pending


def clear() -> None:
    """Forget a pending signal (after it was acted upon)."""
    global _pending
    _pending = None


def raise_if_pending(path: Path | None, steps: int, unit: str = "env steps") -> None:
    """Raise :class:`TrainingInterrupted` for a pending signal (call once the state is saved)."""
    signum = _pending
    if signum is not None:
        clear()
        raise TrainingInterrupted(signum, path, int(steps), unit)


def _record(signum: int, frame) -> None:  # noqa: ARG001 (the signal-handler signature)
    global _pending
    if _pending is None:
        _pending = signum
        return
    # a second signal: the user insists; give the signal its default effect from now on
    signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
    signal.raise_signal(signum)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Record SIGINT/SIGTERM/SIGHUP instead of acting on them, for the duration of the block.

    Nested blocks share the outer block's handlers. The previous handlers are restored on exit;
    a signal still pending then (one that arrived after the loop's last look) is raised again, so
    it takes its usual effect instead of being lost.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is _record
    ):
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    clear()
    for s in HANDLED:
        signal.signal(s, _record)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        late = _pending
        clear()
        if late is not None:
            signal.raise_signal(late)
