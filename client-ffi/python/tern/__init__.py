"""The Tern chat client for Python.

Everything here comes from the Rust client library through UniFFI (the generated module
``tern._ffi``): ``Session`` and its typed requests, the records and enums they return, and the
``ClientError`` exceptions. Every request is a coroutine, so a session is used from asyncio::

    session = await tern.Session.start(addr, tern.Credentials.LOGIN(...), "alice.json",
                                       tern.SessionOptions(client_name="bot/1.0"))
    async for event in tern.events(session):
        ...

This module adds the few things that make it feel at home in asyncio: ``events`` (an async
iterator over a session's events) and ``progress`` (a transfer-progress callback that runs on
the event loop instead of the library's own thread).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Optional

from ._ffi import *  # noqa: F401,F403  (the generated bindings are the package's API)
from ._ffi import Session, SessionEvent, TransferProgress
from ._ffi.tern_ffi import __all__ as _generated

__all__ = [*_generated, "events", "progress"]


async def events(
    session: Session, timeout_ms: Optional[int] = None
) -> AsyncIterator[SessionEvent]:
    """Yields a session's events in order until it stops.

    With ``timeout_ms``, the iteration also ends when no event arrives for that long. Breaking
    out of the loop loses nothing: the event not yet taken stays queued in the session.
    """
    while True:
        if timeout_ms is None:
            event = await session.next_event()
        else:
            event = await session.next_event_within(timeout_ms)
        if event is None:
            return
        yield event


class _LoopProgress(TransferProgress):
    """Hands each progress report to a callback on the event loop, thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int, int], None]):
        self._loop = loop
        self._callback = callback

    def on_progress(self, done_bytes: int, total_bytes: int) -> None:
        self._loop.call_soon_threadsafe(self._callback, done_bytes, total_bytes)


def progress(
    callback: Callable[[int, int], None], loop: Optional[asyncio.AbstractEventLoop] = None
) -> TransferProgress:
    """A ``TransferProgress`` that calls ``callback(done_bytes, total_bytes)`` on the event loop.

    The library reports progress from one of its own threads; this moves each report onto
    ``loop`` (the running loop by default), where the callback may touch the app's state.
    Reports run in order, and all of them before the transfer's coroutine resumes (both are
    handed to the loop the same way, the reports first).
    """
    return _LoopProgress(loop or asyncio.get_running_loop(), callback)
