"""Fixtures of the Python SDK's tests: a real ``ternd`` per test, and helpers to start sessions
and wait for their events with a deadline.

The server binary is ``$TERND_BIN``, else ``$CARGO_TARGET_DIR/debug/ternd`` (the workspace's CI
build), else ``/work/bin/ternd``. Each test gets its own data directory and ports; a test may kill
the server and start it again on the same data directory and port.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

import tern

# How long a server has to print its `listening` line.
SERVER_START_S = 20.0
# How long a test waits for one expected event.
EVENT_WAIT_S = 15.0
# Whole-test limit, so a hang fails the test instead of the run.
TEST_S = 120.0


def ternd_binary() -> str:
    explicit = os.environ.get("TERND_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/tern/target")
    built = Path(target) / "debug" / "ternd"
    if built.exists():
        return str(built)
    return "/work/bin/ternd"


class Ternd:
    """One ``ternd`` process over a data directory that outlives restarts."""

    def __init__(self, data_dir: Path, log_path: Path, tls: bool = False):
        self.data_dir = data_dir
        self.tls = tls
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self.addr: Optional[str] = None
        self.listening: dict = {}

    def start(self, port: int = 0) -> str:
        """Starts the server (on `port`, 0: any) and returns its TCP address."""
        args = [
            ternd_binary(),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{port}",
            "--ws-listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--password-iterations", "1000",
        ]
        if self.tls:
            # A certificate for 127.0.0.1, kept in the data directory.
            args += ["--tls-self-signed", "--tls-listen", "127.0.0.1:0"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def drain(stream) -> None:
            # Reads stdout to its end, so the server never blocks on a full pipe.
            for raw in stream:
                lines.put(raw.decode("utf-8", "replace").strip())
            lines.put(None)

        threading.Thread(target=drain, args=(self.process.stdout,), daemon=True).start()
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("listening "):
                self.listening = dict(
                    part.split("=", 1) for part in line.split()[1:] if "=" in part
                )
                self.addr = self.listening["tcp"]
                return self.addr
        self.kill()
        raise RuntimeError(
            f"ternd did not start; its log:\n{self.log_path.read_text(errors='replace')[-4000:]}"
        )

    @property
    def port(self) -> int:
        assert self.addr is not None
        return int(self.addr.rsplit(":", 1)[1])

    def kill(self) -> None:
        """Kills the server at once (SIGKILL), as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> str:
        """Kills the server and starts it again on the same data directory and port."""
        port = self.port
        self.kill()
        # The port is free once the process is gone; a bind may still race the kernel's
        # clean-up, so a few attempts are allowed.
        last: Optional[Exception] = None
        for _ in range(5):
            try:
                return self.start(port)
            except RuntimeError as error:
                last = error
                time.sleep(0.2)
        raise RuntimeError(f"ternd did not restart on port {port}") from last

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server(tmp_path: Path):
    ternd = Ternd(tmp_path / "data", tmp_path / "ternd.log")
    ternd.start()
    yield ternd
    ternd.stop()


@pytest.fixture
def people(server: Ternd, tmp_path: Path):
    crowd = People(server, tmp_path)
    yield crowd
    asyncio.run(crowd.stop_all())


@pytest.fixture
def tls_server(tmp_path: Path):
    ternd = Ternd(tmp_path / "data", tmp_path / "ternd.log", tls=True)
    ternd.start()
    yield ternd
    ternd.stop()


def async_test(fn: Callable) -> Callable:
    """Runs an async test on a fresh event loop, within the whole-test limit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_S))

    return wrapper


PASSWORD = "correct horse battery staple"


def options() -> tern.SessionOptions:
    # Short reconnect waits so a restarted server is found again quickly.
    return tern.SessionOptions(
        client_name="tern-python-tests/0.1",
        request_timeout_ms=5000,
        reconnect_min_ms=50,
        reconnect_max_ms=500,
        send_timeout_ms=30000,
    )


class People:
    """Starts sessions for a test and stops them all at its end."""

    def __init__(self, server: Ternd, tmp_path: Path):
        self.server = server
        self.tmp_path = tmp_path
        self.sessions: List[tern.Session] = []

    async def start(
        self,
        credentials: tern.Credentials,
        storage: str,
        opts: Optional[tern.SessionOptions] = None,
        addr: Optional[str] = None,
    ) -> tern.Session:
        session = await tern.Session.start(
            addr or self.server.addr,
            credentials,
            str(self.tmp_path / storage),
            opts or options(),
        )
        self.sessions.append(session)
        return session

    async def register(self, name: str) -> tern.Session:
        credentials = tern.Credentials.REGISTER(
            username=name, password=PASSWORD, device_name=f"{name}-python"
        )
        return await self.start(credentials, f"{name}.json")

    async def stop_all(self) -> None:
        for session in self.sessions:
            await session.stop()


async def next_matching(
    session: tern.Session, predicate: Callable, wait_s: float = EVENT_WAIT_S
) -> tern.SessionEvent:
    """The first event for which `predicate` is true, skipping others, within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise AssertionError("no matching event in time")
        event = await session.next_event_within(left_ms)
        if event is not None and predicate(event):
            return event


def is_message(event) -> bool:
    return isinstance(event, tern.SessionEvent.UPDATE) and isinstance(
        event.kind, tern.UpdateKind.NEW_MESSAGE
    )


async def messages(
    session: tern.Session, count: int, wait_s: float = EVENT_WAIT_S
) -> List[tern.Message]:
    """The next `count` messages the session receives (its own sends included), in order."""
    received = []
    for _ in range(count):
        event = await next_matching(session, is_message, wait_s)
        received.append(event.kind.message)
    return received
