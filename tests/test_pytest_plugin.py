"""
Tests for the pytest plugin's C{esmtpkit_server} fixture and the
L{LiveServer} behind it: a real server on a loopback port the system chose,
on a reactor of its own in a thread, talked to with smtplib from plain
synchronous tests, stopped after each test.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from esmtpkit import ESMTPHandler
from esmtpkit.handlers import Maildir
from esmtpkit.liveserver import KINDS, LiveServer, ReactorThread

from .helpers import readReplies, readUntilClosed

Start = Callable[..., LiveServer]

MESSAGE = "From: a@example.org\r\nSubject: plugin test\r\n\r\nHello\r\n"


def test_maildirByDefault(esmtpkit_server: Start, tmp_path: Path) -> None:
    """
    With no handler, a Maildir server in the test's tmp_path: smtplib
    delivers to it, C{messages()} parses what is in new/, C{deliveries}
    has the envelope.
    """
    server = esmtpkit_server()
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.maildir == tmp_path / "Maildir"
    with smtplib.SMTP(*server.address, timeout=10) as client:
        assert client.ehlo()[0] == 250
        assert "pipelining" in client.esmtp_features
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    [message] = server.messages()
    assert message["Subject"] == "plugin test"
    assert message.get_content() == "Hello\n"
    assert "mx.example.test" in message["Received"]
    [delivery] = server.deliveries
    assert (delivery.sender, delivery.recipients) == (
        "alice@example.org",
        ["bob@example.net"],
    )
    assert (delivery.outcome, delivery.codes) == ("accepted", [250])
    assert server.failures == []


def test_ownHandler(esmtpkit_server: Start) -> None:
    """
    A handler factory of the test's own (a closure): its refusals reach the
    client, and what each handler recorded is in C{handlers}.
    """
    seen: list[str] = []

    class Picky(ESMTPHandler):
        def RCPT(self, recipient: str, params: Any) -> Any:
            if recipient.startswith("nobody@"):
                return (550, "5.1.1 No such user")
            return None

        def HEADER(self, name: str, value: str) -> None:
            seen.append(f"{name}: {value}")

    server = esmtpkit_server(lambda: Picky(), maxMessageSize=10_000)
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "10000"
        refused = client.sendmail(
            "alice@example.org", ["nobody@example.net", "bob@example.net"], MESSAGE
        )
        assert refused == {"nobody@example.net": (550, b"5.1.1 No such user")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("alice@example.org", ["nobody@example.net"], MESSAGE)
    assert seen == ["From: a@example.org", "Subject: plugin test"]
    assert len(server.handlers) == 1 and isinstance(server.handlers[0], Picky)
    assert [d.recipients for d in server.deliveries] == [["bob@example.net"]]


def test_lmtpWithFsync(esmtpkit_server: Start) -> None:
    """
    C{kind="lmtp"}: an LMTP server; a Maildir with fsync on (the flush runs
    in the server reactor's own thread pool) answers each recipient.
    """
    server = esmtpkit_server(kind="lmtp")
    assert server.handlers == []
    client = smtplib.LMTP(server.host, server.port, timeout=10)
    try:
        assert client.docmd("EHLO", "c.example")[0] == 500  # LMTP wants LHLO
        assert client.ehlo()[0] == 250  # smtplib.LMTP's says LHLO
        client.sendmail(
            "alice@example.org", ["bob@example.net", "carol@x.test"], MESSAGE
        )
    finally:
        client.quit()
    assert server.handlers[0].fsync is True
    messages = server.messages()
    assert [m["Subject"] for m in messages] == ["plugin test"] * 2
    assert sorted(m["Delivered-To"] for m in messages) == [
        "bob@example.net",
        "carol@x.test",
    ]
    assert server.deliveries[0].codes == [250, 250]


def test_several(esmtpkit_server: Start, tmp_path: Path) -> None:
    """
    Servers of one test each have their port and their own Maildir, and
    messages come back in the order they were delivered.
    """
    first, second = esmtpkit_server(), esmtpkit_server()
    assert first.port != second.port
    assert second.maildir == tmp_path / "Maildir-2"
    for n in range(3):
        with smtplib.SMTP(*second.address, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.org"], f"Subject: {n}\r\n\r\n")
    assert [m["Subject"] for m in second.messages()] == ["0", "1", "2"]
    assert first.messages() == []


def test_failuresRecorded(esmtpkit_server: Start) -> None:
    """
    A hook that raises: the client gets 451, C{failures} has the error.
    """

    class Broken(ESMTPHandler):
        def MAIL(self, sender: str, params: Any) -> Any:
            raise RuntimeError("database is down")

    server = esmtpkit_server(Broken)
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 451
    [failure] = server.failures
    assert failure.check(RuntimeError)
    with pytest.raises(TypeError):
        server.messages()


def test_ownReactor(esmtpkit_server: Start) -> None:
    """
    The server runs on a reactor of its own, not the global one (which
    stays unstarted for the test's own use).
    """
    from twisted.internet import reactor as globalReactor

    server = esmtpkit_server()
    assert server.reactor is not globalReactor
    assert not globalReactor.running
    assert server.reactorThread.call(lambda: server.reactor.running) is True


def test_badArguments(tmp_path: Path) -> None:
    """
    An unknown kind, or a Maildir handler without a folder, is refused.
    """
    assert set(KINDS) == {"smtp", "lmtp"}
    with pytest.raises(ValueError, match="kind"):
        LiveServer(ESMTPHandler, kind="x400")
    with pytest.raises(TypeError, match="maildir"):
        LiveServer(Maildir)


def test_stopDrains(tmp_path: Path) -> None:
    """
    C{stop} closes the listener and the idle connections (421 4.3.2), and
    waits until that is over; a transaction in flight at the deadline gets
    421 too.
    """
    gate: Deferred[None] = Deferred()
    inEOM = threading.Event()

    class Slow(ESMTPHandler):
        def EOM(self) -> Deferred[None]:
            inEOM.set()
            return gate

    server = LiveServer(Slow, shutdownTimeout=1).start()
    idle = socket.create_connection(server.address, timeout=10)
    busy = socket.create_connection(server.address, timeout=10)
    try:
        assert readReplies(idle, 1)[0][0].code == 220
        assert readReplies(busy, 1)[0][0].code == 220
        busy.sendall(b"EHLO c.example\r\n")
        readReplies(busy, 1)
        busy.sendall(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        )
        assert [r.code for r in readReplies(busy, 3)[0]] == [250, 250, 354]
        busy.sendall(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert inEOM.wait(10)
        server.stop()
        for sock in (idle, busy):
            data, closed = readUntilClosed(sock, 10)
            assert closed and data.startswith(b"421 4.3.2 "), data
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=5).close()
        assert gate.called  # cancelled at the deadline
    finally:
        idle.close()
        busy.close()


def test_ownReactorThread(tmp_path: Path) -> None:
    """
    A L{ReactorThread} of one's own serves, then stops.
    """
    thread = ReactorThread()
    try:
        with LiveServer(maildir=tmp_path / "M", reactorThread=thread) as server:
            with smtplib.SMTP(*server.address, timeout=10) as client:
                assert client.noop()[0] == 250
    finally:
        thread.stop()
    assert not thread._thread.is_alive()


def test_entryPointAndTeardown(tmp_path: Path) -> None:
    """
    A plain pytest run, in a process of its own, finds the fixture through
    the installed C{pytest11} entry point (no conftest, no -p), and stops
    the servers after each test, passed or failed.
    """
    ports = tmp_path / "ports"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import smtplib

            def record(server):
                with open({str(ports)!r}, "a") as f:
                    f.write(f"{{server.port}}\\n")

            def test_passes(esmtpkit_server):
                server = esmtpkit_server()
                record(server)
                with smtplib.SMTP(*server.address, timeout=10) as client:
                    client.sendmail("a@example.org", ["b@example.org"], "Subject: s")
                assert server.messages()[0]["Subject"] == "s"

            def test_fails(esmtpkit_server):
                record(esmtpkit_server(kind="lmtp"))
                assert False, "on purpose"
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_inner.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "on purpose" in result.stdout
    recorded = [int(p) for p in ports.read_text().split()]
    assert len(recorded) == 2
    for port in recorded:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_loadingThePluginInstallsNoReactor() -> None:
    """
    pytest loads the plugin in every run of a virtualenv with esmtpkit[test]:
    importing it (and esmtpkit) must leave the choice of the global reactor
    to the project (an asyncio reactor, say), and start no thread.
    """
    code = (
        "import sys, threading\n"
        "import esmtpkit.pytest_plugin\n"
        "print('twisted.internet.reactor' in sys.modules, threading.active_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "1"], result.stdout + result.stderr
