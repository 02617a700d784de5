"""Ctrl-C held off while the main thread holds the node loop's lock.

The embedded driver's thread steps the scheduler and reads workers' replies itself while
the loop sleeps (`ExecService.post_all`, `ExecService.read_reply_here`). A
KeyboardInterrupt raised half way through would break the scheduler's state or a link's
frame stream, and one raised between taking the lock and the `try` that frees it would
stop the loop for good. Python raises KeyboardInterrupt from its SIGINT handler, in the
main thread only, between any two bytecodes; so while the main thread is in such a
section (`held`), the handler installed here notes the interrupt instead, and the end of
the section raises it. A thread waiting inside a section (for a reply) lets it in while
it waits (`interruptible_poll`).

A flag, not a signal mask: blocking SIGINT costs two system calls a section, ~8% of a
burst of submits. If the program installs a SIGINT handler of its own, it takes over and
nothing is held off.
"""

from __future__ import annotations

import select
import signal
import threading
from typing import Any


class _State:
    __slots__ = ("depth", "installed", "pending")

    def __init__(self) -> None:
        self.depth = 0
        """Sections of the main thread entered and not yet left."""
        self.pending = False
        """A Ctrl-C came while in one: raised on leaving the outermost."""
        self.installed = False


_state = _State()
_MAIN = threading.main_thread().ident


def _on_interrupt(signum: int, frame: Any) -> None:
    if _state.depth:
        _state.pending = True
        return
    signal.default_int_handler(signum, frame)


def _install() -> None:
    """Take over SIGINT from Python's default handler (only that one: a program's own
    handler is left alone)."""
    _state.installed = True
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)


class _Held:
    """`with held:` a section no KeyboardInterrupt interrupts (see the module)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN:
            if not _state.installed:
                _install()
            _state.depth += 1

    def __exit__(self, *exc: object) -> None:
        if threading.get_ident() == _MAIN:
            _state.depth -= 1
            if not _state.depth and _state.pending:
                _state.pending = False
                raise KeyboardInterrupt


held = _Held()


def interruptible_poll(poller: select.poll, timeout_ms: float) -> list[tuple[int, int]]:
    """`poller.poll(timeout_ms)` inside a section, with Ctrl-C let in meanwhile (one
    noted before is raised now): a long get still ends on Ctrl-C."""
    if threading.get_ident() != _MAIN:
        return poller.poll(timeout_ms)
    depth, _state.depth = _state.depth, 0
    try:
        if _state.pending:
            _state.pending = False
            raise KeyboardInterrupt
        return poller.poll(timeout_ms)
    finally:
        _state.depth = depth
