"""
The graceful drain of a real C{twistd -n esmtpkit} process (issue 13): SIGTERM
while a client is idle, in the middle of DATA, during a slow EOM that ends
within C{--shutdown-timeout} and during one that does not, and under
C{--workers 2}. The handler is the built-in Maildir, or L{SlowMaildir}
(this module, on PYTHONPATH as in tests/test_postfix_relay.py), whose EOM
waits before it delivers.

Clients are raw sockets on 127.0.0.1; every server is started in a temporary
directory and stopped by its PID (SIGTERM, then SIGKILL) in a C{finally};
every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from esmtpkit.handlers import Maildir
from esmtpkit.reply import HookResult
from esmtpkit.testing import dotStuff

from .helpers import (
    LOOPBACK,
    PROJECT_ROOT,
    TwistdServer,
    freePort,
    maildirFiles,
    readReplies,
    readUntilClosed,
    splitReceived,
)

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"Subject: drained\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a dotted line\r\n"
) + b"A line of the body.\r\n" * 200

DELAY_VARIABLE = "ESMTPKIT_TEST_EOM_DELAY"
MARKER = "eom-started"


class SlowMaildir(Maildir):
    """
    The Maildir handler, except that EOM first writes the file L{MARKER}
    in the working directory, then waits C{$ESMTPKIT_TEST_EOM_DELAY}
    seconds (a slow content check, say) before it delivers.
    """

    def EOM(self) -> HookResult:
        Path(MARKER).write_text("EOM\n")
        delay = float(os.environ.get(DELAY_VARIABLE, "0"))
        return deferLater(reactor, delay, Maildir.EOM, self)


def waitFor(predicate: Callable[[], Any], timeout: float) -> Any:
    """
    Poll C{predicate} until it is true or C{timeout} seconds pass; return
    its last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class Server(TwistdServer):
    """
    C{twistd -n --pidfile= esmtpkit} on a free loopback port with a Maildir
    in C{cwd}, this checkout on PYTHONPATH.
    """

    def __init__(self, cwd: Path, *options: str, delay: float = 0.0) -> None:
        self.smtpPort = freePort()
        self.maildir = cwd / "Maildir"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
        )
        env[DELAY_VARIABLE] = str(delay)
        args = [
            "-n",
            "--pidfile=",
            "esmtpkit",
            "--port",
            f"tcp:{self.smtpPort}:interface={LOOPBACK}",
            "--maildir",
            str(self.maildir),
            *options,
        ]
        super().__init__(args, cwd=cwd, port=self.smtpPort, env=env)

    def terminate(self) -> float:
        """
        Send SIGTERM; return when it was sent (C{time.monotonic()}).
        """
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        return time.monotonic()

    def exitStatus(self, timeout: float) -> int | None:
        """
        The exit status, once the process has exited (L{None} if it is
        still running after C{timeout} seconds).
        """
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> Server:
        super().__enter__()
        return self

    def waitLog(self, text: str, timeout: float = 10.0) -> None:
        assert waitFor(lambda: text in self.output(), timeout), (
            f"{text!r} not in the log:\n{self.output()}"
        )


def client(port: int) -> socket.socket:
    """
    A connection that has been greeted and has said EHLO.
    """
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    replies, _ = readReplies(sock, 1)
    assert [r.code for r in replies] == [220]
    sock.sendall(b"EHLO client.example\r\n")
    replies, _ = readReplies(sock, 1)
    assert [r.code for r in replies] == [250]
    return sock


def openTransaction(sock: socket.socket) -> None:
    """
    MAIL, RCPT and DATA, one at a time, each accepted.
    """
    for command, code in (
        (b"MAIL FROM:<alice@example.org>", 250),
        (b"RCPT TO:<bob@example.net>", 250),
        (b"DATA", 354),
    ):
        sock.sendall(command + b"\r\n")
        replies, _ = readReplies(sock, 1)
        assert [r.code for r in replies] == [code], (command, replies)


def assertShutdownReply(reply: Any) -> None:
    assert (reply.code, reply.enhanced) == (421, "4.3.2"), reply
    assert "shutting down" in reply.text, reply


def assertDelivered(maildir: Path) -> None:
    """
    C{maildir} holds the message once in new/, byte for byte; tmp/ is empty.
    """
    [delivered] = maildirFiles(maildir, "new")
    assert splitReceived(delivered.read_bytes())[1] == MESSAGE
    assert maildirFiles(maildir, "tmp") == []


def test_idleClientGets421(tmp_path: Path) -> None:
    """
    (a) SIGTERM while a client is idle after EHLO: it gets 421 4.3.2 and
    the connection closes; the process exits 0 within a few seconds.
    """
    with Server(tmp_path) as server:
        sock = client(server.smtpPort)
        try:
            sent = server.terminate()
            data, closed = readUntilClosed(sock, timeout=10)
        finally:
            sock.close()
        status = server.exitStatus(10)
        elapsed = time.monotonic() - sent
    replies = [line for line in data.split(b"\r\n") if line]
    assert closed and replies == [replies[0]], data
    assert replies[0].startswith(b"421 4.3.2 "), data
    assert b"Service shutting down" in replies[0]
    assert status == 0, server.output()
    assert elapsed < 5, elapsed


def test_midDataMessageIsDelivered(tmp_path: Path) -> None:
    """
    (b) SIGTERM in the middle of DATA: the client sends the rest of its
    message and gets 250, then 421 4.3.2; the message is in new/ and the
    process exits 0.
    """
    with Server(tmp_path) as server:
        sock = client(server.smtpPort)
        try:
            openTransaction(sock)
            data = dotStuff(MESSAGE)
            sock.sendall(data[:100])
            server.terminate()
            server.waitLog("shutting down: draining")
            time.sleep(0.2)  # the client takes its time
            sock.sendall(data[100:])
            replies, raw = readReplies(sock, 2)
            _, closed = readUntilClosed(sock, timeout=10)
        finally:
            sock.close()
        status = server.exitStatus(10)
    assert [r.code for r in replies] == [250, 421], raw
    assertShutdownReply(replies[1])
    assert closed
    assert status == 0, server.output()
    assertDelivered(server.maildir)


def test_slowEomWithinTheTimeout(tmp_path: Path) -> None:
    """
    (c) SIGTERM while a 2-second EOM runs, with the default 30-second
    timeout: 250, then 421 4.3.2; the message is in new/; exit 0.
    """
    handler = f"{__name__}.SlowMaildir"
    with Server(tmp_path, "--handler", handler, delay=2.0) as server:
        sock = client(server.smtpPort)
        try:
            openTransaction(sock)
            sock.sendall(dotStuff(MESSAGE))
            assert waitFor((tmp_path / MARKER).exists, 10), server.output()
            server.terminate()
            replies, raw = readReplies(sock, 2, timeout=15)
            _, closed = readUntilClosed(sock, timeout=10)
        finally:
            sock.close()
        status = server.exitStatus(10)
    assert [r.code for r in replies] == [250, 421], raw
    assertShutdownReply(replies[1])
    assert closed
    assert status == 0, server.output()
    assertDelivered(server.maildir)


def test_slowEomPastTheTimeout(tmp_path: Path) -> None:
    """
    (d) SIGTERM while a 60-second EOM runs, with --shutdown-timeout 1: at
    the deadline the client gets 421 4.3.2 and no 250, the connection
    closes, nothing is in new/ (nor in tmp/: the message was aborted), and
    the process exits 0 soon after.
    """
    handler = f"{__name__}.SlowMaildir"
    options = ("--handler", handler, "--shutdown-timeout", "1")
    with Server(tmp_path, *options, delay=60.0) as server:
        sock = client(server.smtpPort)
        try:
            openTransaction(sock)
            sock.sendall(dotStuff(MESSAGE))
            assert waitFor((tmp_path / MARKER).exists, 10), server.output()
            sent = server.terminate()
            data, closed = readUntilClosed(sock, timeout=15)
            closedAfter = time.monotonic() - sent
        finally:
            sock.close()
        status = server.exitStatus(10)
        elapsed = time.monotonic() - sent
    lines = [line for line in data.split(b"\r\n") if line]
    assert closed and len(lines) == 1 and lines[0].startswith(b"421 4.3.2 "), data
    assert 0.9 <= closedAfter < 5, closedAfter
    assert status == 0, server.output()
    assert elapsed < 8, elapsed
    assert maildirFiles(server.maildir, "new") == []
    assert maildirFiles(server.maildir, "tmp") == []
    assert "shutdown deadline" in server.output()


def test_workersDrainToo(tmp_path: Path) -> None:
    """
    (e) Under --workers 2, SIGTERM to the supervisor: it passes it on, the
    idle client of a worker gets 421 4.3.2, and the supervisor exits 0
    with every worker gone.
    """
    from .test_workers import alive, childrenOf

    with Server(tmp_path, "--workers", "2") as server:
        assert server.process is not None
        parent = server.process.pid
        workers = waitFor(lambda: len(childrenOf(parent)) == 2, 10)
        assert workers, server.output()
        pids = childrenOf(parent)
        sock = client(server.smtpPort)
        try:
            sent = server.terminate()
            data, closed = readUntilClosed(sock, timeout=15)
        finally:
            sock.close()
        status = server.exitStatus(15)
        elapsed = time.monotonic() - sent
        gone = waitFor(lambda: not any(alive(pid) for pid in pids), 5)
    assert closed and data.startswith(b"421 4.3.2 "), data
    assert status == 0, server.output()
    assert elapsed < 10, elapsed
    assert gone, [pid for pid in pids if alive(pid)]


def test_secondSigtermEndsTheDrain(tmp_path: Path) -> None:
    """
    A second SIGTERM while draining reaches the deadline at once: the
    client whose 60-second EOM runs (the timeout is the default 30 s) gets
    421 4.3.2 right away, nothing is delivered, and the process exits 0.
    """
    handler = f"{__name__}.SlowMaildir"
    with Server(tmp_path, "--handler", handler, delay=60.0) as server:
        sock = client(server.smtpPort)
        try:
            openTransaction(sock)
            sock.sendall(dotStuff(MESSAGE))
            assert waitFor((tmp_path / MARKER).exists, 10), server.output()
            server.terminate()
            server.waitLog("shutting down: draining")
            replies, _ = readReplies(sock, 1, timeout=1)
            assert replies == []
            sent = server.terminate()
            data, closed = readUntilClosed(sock, timeout=10)
            closedAfter = time.monotonic() - sent
        finally:
            sock.close()
        status = server.exitStatus(10)
    assert closed and data.startswith(b"421 4.3.2 ") and b"250" not in data, data
    assert closedAfter < 3, closedAfter
    assert status == 0, server.output()
    assert maildirFiles(server.maildir, "new") == []
    assert maildirFiles(server.maildir, "tmp") == []
