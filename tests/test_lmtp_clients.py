"""
LMTP with real clients: C{twistd esmtpkit --lmtp ...} (over TCP and a unix
socket) as the delivery agent of a private Postfix (L{tests.postfix}), and
driven by C{swaks --protocol LMTP} and Postfix's C{smtp-source -L}.

The handler, L{SplitMaildir}, answers the end of data per recipient:
C{refused@} gets 550 5.1.1, C{deferred@} 451 4.2.0 (both deleted from the
envelope with C{transaction.modifications}, so not stored), everyone else
the Maildir's 250 and a copy of their own. Postfix must then deliver one
recipient, bounce one and keep one in its deferred queue.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from esmtpkit import PerRecipient
from esmtpkit.handlers import Maildir

from .helpers import LOOPBACK, PROJECT_ROOT, TwistdServer, freePort, maildirFiles
from .postfix import PrivatePostfix, postfixCommand

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: three recipients over LMTP\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".leading dot\r\n"
)
OK, REFUSED, DEFERRED = "ok@example.org", "refused@example.org", "deferred@example.org"


class SplitMaildir(Maildir):
    """
    Maildir delivery with a reply per recipient (see the module docstring);
    a message no recipient takes is not stored.
    """

    def EOM(self) -> Any:
        transaction = self.session.transaction
        assert transaction is not None
        verdicts: list[Any] = []
        for recipient in transaction.recipients:
            local = recipient.address.split("@")[0].lower()
            if local == "refused":
                verdicts.append((550, "5.1.1 No such mailbox here"))
            elif local == "deferred":
                verdicts.append((451, "4.2.0 Mailbox busy, try later"))
            else:
                verdicts.append(None)
        if all(v is not None for v in verdicts):
            self._discard()
            return PerRecipient(verdicts)
        for recipient, verdict in zip(transaction.recipients, verdicts, strict=True):
            if verdict is not None:
                transaction.modifications.deleteRecipient(recipient.address)
        stored = super().EOM()

        def split(reply: Any) -> PerRecipient:
            return PerRecipient([reply if v is None else v for v in verdicts])

        if isinstance(stored, Deferred):
            return stored.addCallback(split)
        return split(stored)


def _socketDirectory() -> Iterator[Path]:
    # Postfix's lmtp client runs as user postfix: the socket must be in a
    # folder it can enter (pytest's tmp_path is not).
    path = Path(tempfile.mkdtemp(prefix="esmtpkit-lmtp-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socketDirectory() -> Iterator[Path]:
    """
    A folder for a unix socket that any user may reach.
    """
    yield from _socketDirectory()


def _waitForSocket(path: Path, server: TwistdServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise AssertionError(f"twistd exited:\n{server.output()}")
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.settimeout(2)
                probe.connect(str(path))
                if probe.recv(4).startswith(b"220"):
                    return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    raise AssertionError(f"no LMTP server on {path}:\n{server.output()}")


def lmtpServer(
    workdir: Path, listen: str, handler: str = f"{__name__}.SplitMaildir"
) -> tuple[TwistdServer, Path]:
    """
    A started C{twistd esmtpkit --lmtp LISTEN} with C{handler} and a
    Maildir in C{workdir}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p
    )
    maildir = workdir / "Maildir"
    port = int(listen.split(":")[1]) if listen.startswith("tcp:") else None
    args = ["-n", "--pidfile=", "esmtpkit", "--lmtp", listen]
    args += ["--handler", handler, "--maildir", str(maildir), "--hostname", "lmtp.test"]
    server = TwistdServer(args, cwd=workdir, port=port, env=env)
    server.start()
    if port is None:
        _waitForSocket(Path(listen.split(":", 1)[1]), server)
    return server, maildir


@pytest.fixture
def lmtpOverUnix(tmp_path: Path, socketDirectory: Path) -> Iterator[tuple[str, Path]]:
    """
    An LMTP server on a unix socket: (Postfix transport, Maildir).
    """
    path = socketDirectory / "lmtp.sock"
    server, maildir = lmtpServer(tmp_path, f"unix:{path}")
    try:
        yield f"lmtp:unix:{path}", maildir
    finally:
        server.stop()


@pytest.fixture
def lmtpOverTCP(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """
    An LMTP server on a loopback TCP port: (Postfix transport, Maildir,
    port).
    """
    port = freePort()
    server, maildir = lmtpServer(tmp_path, f"tcp:{port}:interface={LOOPBACK}")
    try:
        yield f"lmtp:inet:{LOOPBACK}:{port}", maildir, port
    finally:
        server.stop()


def _deliverThree(postfix: PrivatePostfix, maildir: Path) -> None:
    submitted = postfix.submit(MESSAGE, recipients=(OK, REFUSED, DEFERRED))
    assert submitted.queueId is not None
    assert all(code == 250 for code, _ in submitted.rcpt.values()), submitted
    sent = postfix.deliveryStatus(OK, submitted.queueId)
    assert (sent.status, sent.dsn, sent.agent) == ("sent", "2.0.0", "lmtp"), sent
    bounced = postfix.deliveryStatus(REFUSED, submitted.queueId)
    assert (bounced.status, bounced.dsn) == ("bounced", "5.1.1"), bounced
    assert "No such mailbox here" in bounced.text
    deferred = postfix.deliveryStatus(DEFERRED, submitted.queueId, final=False)
    assert (deferred.status, deferred.dsn) == ("deferred", "4.2.0"), deferred
    waiting = [
        recipient["address"]
        for message in postfix.mailq()
        for recipient in message["recipients"]
    ]
    assert waiting == [DEFERRED]
    # Postfix retries the deferred recipient alone; that is never stored.
    files = maildirFiles(maildir, "new")
    assert len(files) == 1, files
    stored = files[0].read_bytes()
    assert b"with LMTP" in stored.split(b"\r\n\r\n")[0]
    assert stored.startswith(
        b"Return-Path: <alice@sender.test>\r\n"
        b"X-Original-To: ok@example.org\r\n"
        b"Delivered-To: ok@example.org\r\n"
    )
    assert stored.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])


def test_postfixOverUnixSocket(
    privatePostfix: Callable[..., PrivatePostfix], lmtpOverUnix: tuple[str, Path]
) -> None:
    """
    Postfix delivers through C{lmtp:unix:}: one recipient delivered, one
    bounced with the handler's 550, one deferred with its 451.
    """
    transport, maildir = lmtpOverUnix
    _deliverThree(privatePostfix(transport), maildir)


def test_postfixOverTCP(
    privatePostfix: Callable[..., PrivatePostfix],
    lmtpOverTCP: tuple[str, Path, int],
) -> None:
    """
    The same through C{lmtp:inet:127.0.0.1:PORT}.
    """
    transport, maildir, _ = lmtpOverTCP
    _deliverThree(privatePostfix(transport), maildir)


def test_swaks(lmtpOverTCP: tuple[str, Path, int]) -> None:
    """
    C{swaks --protocol LMTP} greets with LHLO and reads one reply per
    recipient after the dot.
    """
    _, maildir, port = lmtpOverTCP
    result = subprocess.run(
        [
            "swaks",
            "--protocol",
            "LMTP",
            "--server",
            f"{LOOPBACK}:{port}",
            "--from",
            "alice@sender.test",
            "--to",
            f"{OK},{REFUSED}",
            "--h-Subject",
            "swaks over LMTP",
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert "-> LHLO" in output, output
    after = output.split("-> .", 1)[1]
    assert "<-  250 2.0.0" in after and "<** 550 5.1.1" in after, output
    assert len(maildirFiles(maildir, "new")) == 1


def test_smtpSource(lmtpOverUnix: tuple[str, Path]) -> None:
    """
    Postfix's C{smtp-source -L} sends ten messages over LMTP on the unix
    socket, two recipients each; each recipient gets its own copy.
    """
    transport, maildir = lmtpOverUnix
    path = transport.split(":", 2)[2]
    result = subprocess.run(
        [
            postfixCommand("smtp-source"),
            "-L",
            "-s",
            "2",
            "-m",
            "10",
            "-r",
            "2",
            "-f",
            "alice@sender.test",
            "-t",
            OK,
            "-M",
            "client.test",
            f"unix:{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = maildirFiles(maildir, "new")
    assert len(files) == 20
    delivered = {
        line
        for path in files
        for line in path.read_bytes().split(b"\r\n")
        if line.startswith(b"Delivered-To: ")
    }
    assert len(delivered) == 2, delivered
