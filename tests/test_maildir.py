"""
Tests for L{esmtpkit.handlers.Maildir}: delivery into C{new/} after a
C{Received:} header, nothing left behind by messages that do not complete,
unique file names, and C{fromOptions}.

Most tests run the handler with C{fsync=False} over the in-memory
L{SMTPTestConnection} (everything synchronous); one trial TestCase uses the
real reactor, because with C{fsync=True} the handler flushes in a thread.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.threads import deferToThread
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from esmtpkit import ReplyError
from esmtpkit.handlers import Maildir, delivery
from esmtpkit.handlers.delivery import SPOOL_MEMORY
from esmtpkit.testing import SMTPTestConnection, dotStuff, parseReplies

from .helpers import maildirFiles, splitDelivery, splitReceived, tempDir, waitUntil

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Carol <carol@example.net>\r\n"
    b"Subject: a folded\r\n"
    b" subject line\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"\r\n"
    # No bare CR or LF: the default policy refuses them (see test_smuggling).
    b"8-bit \xff\xfe\x00 bytes and control \x0b\x0c characters\r\n"
    b"last line\r\n"
)


def _connect(path: Path, **overrides: Any) -> SMTPTestConnection:
    conn = SMTPTestConnection(lambda: Maildir(str(path), fsync=False), **overrides)
    assert conn.command("EHLO client.example").code == 250
    return conn


def _startTransaction(
    conn: SMTPTestConnection, rcpt: str = "carol@example.net"
) -> None:
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command(f"RCPT TO:<{rcpt}>").code == 250


def test_deliversReceivedHeaderThenExactBytes(tmp_path: Path) -> None:
    """
    An accepted message is one file in new/: a Received: header naming the
    client, this server, the protocol, the transaction id and the recipient,
    then the message bytes exactly as sent (dot-stuffing undone).
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    reply = conn.sendMessage(MESSAGE)
    assert reply.code == 250
    files = maildirFiles(tmp_path, "new")
    assert len(files) == 1
    received, rest = splitReceived(files[0].read_bytes())
    assert rest == MESSAGE
    text = received.decode("utf-8")
    assert text.startswith("Received: from client.example ([192.0.2.1])")
    assert "by mx.example.test" in text
    assert "with ESMTP" in text
    assert "for <carol@example.net>;" in text
    # The Received id is the transaction id the EOM reply names.
    transactionId = reply.text.rsplit(" ", 1)[-1]
    assert f" id {transactionId}" in text
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "cur") == []


def test_messageWithoutTrailingCRLF(tmp_path: Path) -> None:
    """
    A message that does not end with CRLF is stored with the CRLF that
    precedes the terminating dot (it is part of the data on the wire).
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    assert conn.sendMessage(b"Subject: x\r\n\r\nno newline").code == 250
    (path,) = maildirFiles(tmp_path, "new")
    assert splitReceived(path.read_bytes())[1] == b"Subject: x\r\n\r\nno newline\r\n"


def test_disconnectMidMessageLeavesNothing(tmp_path: Path) -> None:
    """
    The client vanishing in the middle of the message removes the partial
    file from tmp/ (a message past what is kept in memory is there) and
    delivers nothing.
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    assert conn.command("DATA").code == 354
    body = (b"x" * 998 + b"\r\n") * (SPOOL_MEMORY // 1000 + 1)
    conn.send(b"Subject: partial\r\n\r\n" + body + b"more")
    assert len(maildirFiles(tmp_path, "tmp")) == 1  # it was being written
    conn.close()
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "new") == []


def test_disconnectInHeadersLeavesNothing(tmp_path: Path) -> None:
    """
    The client vanishing while still sending headers leaves nothing.
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    assert conn.command("DATA").code == 354
    conn.send(b"Subject: partial\r\nX-Other: also")
    conn.close()
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "new") == []


def test_rsetBeforeDataLeavesNothing(tmp_path: Path) -> None:
    """
    A transaction reset with RSET (or a new EHLO) before DATA leaves nothing,
    and the next message is delivered normally.
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    assert conn.command("RSET").code == 250
    _startTransaction(conn)
    assert conn.command("EHLO again.example").code == 250
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "new") == []
    _startTransaction(conn)
    assert conn.sendMessage(b"Subject: kept\r\n\r\nbody\r\n").code == 250
    assert len(maildirFiles(tmp_path, "new")) == 1


def test_oversizedMessageLeavesNothing(tmp_path: Path) -> None:
    """
    A message over the size limit is refused with 552 after its end and no
    part of it stays in tmp/ or new/; the connection goes on.
    """
    conn = _connect(tmp_path, maxMessageSize=1000)
    _startTransaction(conn)
    reply = conn.sendMessage(b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 500)
    assert reply.code == 552
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "new") == []
    assert conn.command("NOOP").code == 250


class _PickyMaildir(Maildir):
    """
    Refuses messages with a C{X-Spam: yes} header.
    """

    def HEADER(self, name: str, value: str) -> None:
        if name.lower() == "x-spam" and value == "yes":
            raise ReplyError(550, "5.7.1 No spam, thanks")


def test_refusedByHeaderHookLeavesNothing(tmp_path: Path) -> None:
    """
    A message refused by a content hook (HEADER raising ReplyError) gets that
    reply after its end, and leaves nothing behind; a later message on the
    same connection is delivered.
    """
    conn = SMTPTestConnection(lambda: _PickyMaildir(str(tmp_path), fsync=False))
    assert conn.command("EHLO client.example").code == 250
    _startTransaction(conn)
    reply = conn.sendMessage(b"Subject: buy\r\nX-Spam: yes\r\n\r\n" + b"spam\r\n" * 100)
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert maildirFiles(tmp_path, "tmp") == []
    assert maildirFiles(tmp_path, "new") == []
    _startTransaction(conn)
    assert conn.sendMessage(b"Subject: fine\r\n\r\nok\r\n").code == 250
    assert len(maildirFiles(tmp_path, "new")) == 1
    assert maildirFiles(tmp_path, "tmp") == []


def test_uniqueNamesForManyMessages(tmp_path: Path) -> None:
    """
    Many messages, on one connection and on several, each get their own file
    in new/ with their own content.
    """
    sent = []
    for connection in range(4):
        conn = _connect(tmp_path)
        for index in range(50):
            message = b"Subject: %d/%d\r\n\r\nbody %d %d\r\n" % (
                connection,
                index,
                connection,
                index,
            )
            _startTransaction(conn)
            assert conn.sendMessage(message).code == 250
            sent.append(message)
        conn.command("QUIT")
    files = maildirFiles(tmp_path, "new")
    assert len(files) == len(sent) == 200
    assert len({p.name for p in files}) == 200
    stored = sorted(splitReceived(p.read_bytes())[1] for p in files)
    assert stored == sorted(sent)
    assert maildirFiles(tmp_path, "tmp") == []


def test_pipelinedMessages(tmp_path: Path) -> None:
    """
    Two transactions pipelined as RFC 2920 allows (the client waits only
    for the 354s; the second transaction's commands follow the first
    message in the same read) are both delivered, in order.
    """
    conn = _connect(tmp_path)
    envelope = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    reads = [
        envelope,
        dotStuff(b"Subject: 1\r\n\r\n.1\r\n") + envelope,
        dotStuff(b"Subject: 2\r\n\r\n.2\r\n") + b"QUIT\r\n",
    ]
    codes = []
    for data in reads:
        conn.send(data)
        codes += [r.code for r in conn.replies()]
    assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221]
    bodies = sorted(
        splitReceived(p.read_bytes())[1] for p in maildirFiles(tmp_path, "new")
    )
    assert bodies == [b"Subject: 1\r\n\r\n.1\r\n", b"Subject: 2\r\n\r\n.2\r\n"]


def test_fromOptionsCreatesFolders(tmp_path: Path) -> None:
    """
    C{Maildir.fromOptions} creates the folder named by --maildir with tmp/,
    new/ and cur/ at once, and returns a factory of handlers for it.
    """
    target = tmp_path / "deep" / "mail"
    factory = Maildir.fromOptions({"maildir": str(target)})
    for sub in ("tmp", "new", "cur"):
        assert (target / sub).is_dir()
    handler = factory()
    assert isinstance(handler, Maildir)
    assert handler.path == str(target)
    assert factory() is not handler


def test_fromOptionsDefaultsToMaildirInCwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Without --maildir, C{fromOptions} uses ./Maildir.
    """
    monkeypatch.chdir(tmp_path)
    factory = Maildir.fromOptions({})
    for sub in ("tmp", "new", "cur"):
        assert (tmp_path / "Maildir" / sub).is_dir()
    assert factory().path == str(tmp_path / "Maildir")


def test_fromOptionsBadPathFails(tmp_path: Path) -> None:
    """
    A --maildir path that cannot be created fails at once, with a usage
    error that names the option and the path.
    """
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    path = str(blocker / "Maildir")
    with pytest.raises(UsageError) as raised:
        Maildir.fromOptions({"maildir": path})
    assert str(raised.value).startswith(f"--maildir {path}: ")


class MaildirFsyncTests(TestCase):
    """
    The Maildir handler with C{fsync=True}, which flushes in a thread: needs
    the real reactor.
    """

    timeout = 30

    async def test_fsyncDelivery(self) -> None:
        """
        With fsync on, two pipelined messages are both delivered (the second
        transaction waits for the first EOM), replies stay in order, and
        tmp/ is empty afterwards.
        """
        path = tempDir(self) / "Maildir"
        conn = SMTPTestConnection(
            lambda: Maildir(str(path), fsync=True), threadRunner=deferToThread
        )
        conn.send(b"EHLO client.example\r\n")
        envelope = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        conn.send(envelope)
        # The second envelope is pipelined right after the first message, as
        # RFC 2920 allows; the client waits for the 354 before the content.
        conn.send(dotStuff(MESSAGE + b"1\r\n") + envelope)
        # The first EOM is pending in a thread: input is paused.
        self.assertEqual(conn.transport.producerState, "paused")
        await waitUntil(
            lambda: conn.transport.value().count(b"\r\n354 ") == 2, timeout=20
        )
        conn.send(dotStuff(MESSAGE + b"2\r\n") + b"QUIT\r\n")
        await waitUntil(lambda: conn.closed, timeout=20)
        replies, rest = parseReplies(conn.transport.value())
        self.assertEqual(rest, b"")
        self.assertEqual(
            [r.code for r in replies],
            [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221],
        )
        stored = sorted(
            splitReceived(p.read_bytes())[1] for p in maildirFiles(path, "new")
        )
        self.assertEqual(stored, [MESSAGE + b"1\r\n", MESSAGE + b"2\r\n"])
        self.assertEqual(maildirFiles(path, "tmp"), [])
        self.assertTrue(os.path.isdir(path / "cur"))


# -- a local delivery agent's headers ------------------------------------------


def test_deliveryHeaders(tmp_path: Path) -> None:
    """
    Above its Received: header each message gets Return-Path with the
    sender, X-Original-To and Delivered-To with the recipient, as a local
    delivery agent writes them.
    """
    conn = _connect(tmp_path)
    _startTransaction(conn)
    assert conn.sendMessage(MESSAGE).code == 250
    (path,) = maildirFiles(tmp_path, "new")
    delivery, rest = splitDelivery(path.read_bytes())
    assert delivery == (
        b"Return-Path: <alice@example.org>\r\n"
        b"X-Original-To: carol@example.net\r\n"
        b"Delivered-To: carol@example.net\r\n"
    )
    assert rest.startswith(b"Received: from client.example")
    assert splitReceived(rest)[1] == MESSAGE


def test_copyPerRecipient(tmp_path: Path) -> None:
    """
    Each recipient gets its own copy with its own Delivered-To (as an LDA
    delivering to several mailboxes); a recipient named twice (in any case)
    gets one; the copies differ only in their delivery headers.
    """
    conn = _connect(tmp_path)
    assert conn.command("MAIL FROM:<>").code == 250
    for rcpt in ("bob@example.net", "carol@example.net", "BOB@example.net"):
        assert conn.command(f"RCPT TO:<{rcpt}>").code == 250
    assert conn.sendMessage(MESSAGE).code == 250
    copies = [splitDelivery(p.read_bytes()) for p in maildirFiles(tmp_path, "new")]
    assert sorted(delivery for delivery, _ in copies) == [
        b"Return-Path: <>\r\nX-Original-To: %s\r\nDelivered-To: %s\r\n" % (a, a)
        for a in (b"bob@example.net", b"carol@example.net")
    ]
    assert copies[0][1] == copies[1][1]
    assert splitReceived(copies[0][1])[1] == MESSAGE
    assert maildirFiles(tmp_path, "tmp") == []


def test_originalRecipientFromORCPT(tmp_path: Path) -> None:
    """
    X-Original-To gives the address of the recipient's ORCPT parameter
    (RFC 3461) when it is an rfc822 mailbox; an ORCPT of another type, or
    one that is no mailbox, is not used.
    """
    conn = _connect(tmp_path)
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    for rcpt in (
        "<a@example.net> ORCPT=rfc822;first@example.org",
        "<b@example.net> ORCPT=x400;c+3Dus",
        "<c@example.net> ORCPT=rfc822;not+20a+20mailbox",
    ):
        assert conn.command(f"RCPT TO:{rcpt}").code == 250
    assert conn.sendMessage(b"Subject: dsn\r\n\r\nbody\r\n").code == 250
    headers = sorted(
        splitDelivery(p.read_bytes())[0].split(b"\r\n")[1:3]
        for p in maildirFiles(tmp_path, "new")
    )
    assert sorted(headers, key=lambda h: h[1]) == [
        [b"X-Original-To: first@example.org", b"Delivered-To: a@example.net"],
        [b"X-Original-To: b@example.net", b"Delivered-To: b@example.net"],
        [b"X-Original-To: c@example.net", b"Delivered-To: c@example.net"],
    ]


def test_deliveryHeadersOff(tmp_path: Path) -> None:
    """
    With the delivery headers off the handler is a catch-all mailbox: one
    file per message, whatever the number of recipients, starting with the
    Received: header.
    """
    conn = SMTPTestConnection(
        lambda: Maildir(
            str(tmp_path),
            fsync=False,
            returnPath=False,
            deliveredTo=False,
            originalTo=False,
        )
    )
    assert conn.command("EHLO client.example").code == 250
    _startTransaction(conn)
    assert conn.command("RCPT TO:<dave@example.net>").code == 250
    assert conn.sendMessage(MESSAGE).code == 250
    (path,) = maildirFiles(tmp_path, "new")
    data = path.read_bytes()
    assert data.startswith(b"Received: ")
    assert splitReceived(data)[1] == MESSAGE


def test_returnPathOnly(tmp_path: Path) -> None:
    """
    Return-Path alone keeps one file for all recipients.
    """
    conn = SMTPTestConnection(
        lambda: Maildir(str(tmp_path), fsync=False, deliveredTo=False, originalTo=False)
    )
    assert conn.command("EHLO client.example").code == 250
    _startTransaction(conn)
    assert conn.command("RCPT TO:<dave@example.net>").code == 250
    assert conn.sendMessage(MESSAGE).code == 250
    (path,) = maildirFiles(tmp_path, "new")
    delivery, rest = splitDelivery(path.read_bytes())
    assert delivery == b"Return-Path: <alice@example.org>\r\n"
    assert splitReceived(rest)[1] == MESSAGE


_line = st.binary(max_size=300).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
)


@settings(max_examples=60, deadline=None)
@given(
    body=st.lists(_line, max_size=60),
    memory=st.sampled_from([1, 100, 1000, 4096]),
    fsync=st.booleans(),
    recipients=st.integers(1, 2),
)
def test_spoolInMemoryIsTheFileSpool(
    body: list[bytes], memory: int, fsync: bool, recipients: int
) -> None:
    """
    A message kept in memory until its end (the fast path) is stored as
    one spooled to a file from its first byte (no memory at all), byte for
    byte, whatever the memory kept, with fsync or without, with one copy
    or two; and a message that outgrows the memory goes on in a file.
    """
    message = b"Subject: spool\r\n\r\n" + b"".join(body)
    stored = {}
    for kept in (0, memory):
        with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as m:
            m.setattr(delivery, "SPOOL_MEMORY", kept)
            path = Path(folder)
            conn = SMTPTestConnection(lambda p=str(path): Maildir(p, fsync=fsync))
            assert conn.command("EHLO client.example").code == 250
            assert conn.command("MAIL FROM:<alice@example.org>").code == 250
            for n in range(recipients):
                assert conn.command(f"RCPT TO:<r{n}@example.net>").code == 250
            assert conn.command("DATA").code == 354
            conn.send(dotStuff(message)[: -len(b".\r\n")])
            spilled = bool(maildirFiles(path, "tmp"))
            if kept == 0 or kept < len(message):
                assert spilled
            elif kept > len(message) + 1000:  # its headers are less
                assert not spilled
            conn.send(b".\r\n")
            assert [r.code for r in conn.replies()][-1] == 250
            copies = []
            for file in maildirFiles(path, "new"):
                delivered, rest = splitDelivery(file.read_bytes())
                copies.append(delivered + splitReceived(rest)[1])
            stored[kept] = sorted(copies)
            assert maildirFiles(path, "tmp") == []
    assert stored[memory] == stored[0]
    assert [s.endswith(message) for s in stored[0]] == [True] * recipients
