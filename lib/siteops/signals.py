"""SIGINT (Ctrl-C) and SIGTERM (systemd stopping a unit, a cancelled job):
every command turns them into an Interrupted exception, so they take the same
path as an error (what was not checked is put back) and the command exits
128 + the signal's number; a put-back holds them until it ends."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from .errors import Interrupted

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def on_interrupt(signum: int, _frame) -> None:
    """The SIGINT and SIGTERM handler of every command (cli.main installs it)."""
    raise Interrupted(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """SIGINT and SIGTERM held back inside the block (a put-back must run to its
    end), then delivered: as the block ends normally, or not at all when an
    exception already ends the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: held.append(signum))
                for sig in INTERRUPTS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        signal.raise_signal(held[0])

