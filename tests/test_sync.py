"""
Issue 4, protocol synchronization: early talkers (data before the greeting,
with C{greetingDelay} or an asynchronous CONNECT) and pipelining where it is
not allowed (before EHLO, after HELO, after EHLO, after DATA, without
PIPELINING) get 554 5.5.0 and are disconnected; legitimate RFC 2920
pipelining works. In memory (L{SMTPTestConnection} and a fake Clock).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import Reply
from esmtpkit.testing import SMTPTestConnection

from .test_protocol import Recorder, connect, recorderFactory

SYNC_ERROR = (554, "5.5.0")


def codes(conn: SMTPTestConnection) -> list[tuple[int, str | None]]:
    """
    The new replies as C{(code, enhanced)}.
    """
    return [(r.code, r.enhanced) for r in conn.replies()]


def assertViolation(
    conn: SMTPTestConnection, before: int = 0, hookPending: bool = False
) -> None:
    """
    The last reply is 554 5.5.0 "protocol synchronization", nothing comes
    after it, and the connection is closed with DISCONNECT as the last hook
    (unless C{hookPending}: DISCONNECT then waits for the hook in flight).
    """
    replies = conn.replies()
    assert len(replies) == before + 1, replies
    last = replies[-1]
    assert (last.code, last.enhanced) == SYNC_ERROR, replies
    assert "synchronization" in last.text
    assert conn.closed
    if not hookPending:
        assert conn.handler.names()[-1] == "DISCONNECT"
    assert conn.transport.value().endswith(b"\r\n")
    assert (
        conn.transport.value()
        .rstrip(b"\r\n")
        .rsplit(b"\r\n", 1)[-1]
        .startswith(b"554 5.5.0 ")
    )


class EarlyTalkerTests(SynchronousTestCase):
    """
    A client that sends before the greeting.
    """

    def test_greetingDelay(self) -> None:
        """
        With greetingDelay, a client that talks first gets 554 5.5.0 and
        is disconnected; no greeting is ever sent and no command executed.
        """
        conn = connect(greetingDelay=5)
        self.assertIsNone(conn.greeting)
        conn.clock.advance(2)
        self.assertEqual(conn.transport.value(), b"")
        conn.send(b"EHLO client.example\r\n")
        assertViolation(conn)
        conn.clock.advance(10)
        self.assertEqual(conn.replies(), [])
        names = conn.handler.names()
        self.assertNotIn("EHLO", names)
        self.assertNotIn("CONNECT", names)
        self.assertEqual(names, ["DISCONNECT"])

    def test_greetingDelayPatientClient(self) -> None:
        """
        A client that waits for the delayed greeting is served.
        """
        conn = connect(greetingDelay=5)
        conn.clock.advance(4.9)
        self.assertEqual(conn.transport.value(), b"")
        conn.clock.advance(0.1)
        [greeting] = conn.replies()
        self.assertEqual(greeting.code, 220)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        self.assertFalse(conn.closed)

    def test_asyncConnect(self) -> None:
        """
        While an asynchronous CONNECT has not answered, a client that talks
        gets 554 5.5.0 and is disconnected; the greeting CONNECT gives later
        is never written after it, and no command is executed.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(CONNECT=lambda h: d))
        conn.send(b"NOOP\r\n")
        assertViolation(conn, hookPending=True)
        self.assertNotIn("DISCONNECT", conn.handler.names())
        d.callback(None)
        self.assertEqual(conn.replies(), [], "a reply written after the 554")
        self.assertNotIn(b"220", conn.transport.value())
        self.assertNotIn("NOOP", conn.handler.names())
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")

    def test_asyncConnectPatientClient(self) -> None:
        """
        A client that waits for an asynchronous greeting is served.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(CONNECT=lambda h: d))
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [220])
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_partialLineIsTalking(self) -> None:
        """
        Even a few bytes without a line end before the greeting count.
        """
        conn = connect(greetingDelay=1)
        conn.send(b"EH")
        assertViolation(conn)

    def test_enforceSyncOff(self) -> None:
        """
        With enforceSync off, early input waits for the greeting and is
        then answered.
        """
        conn = connect(greetingDelay=5, enforceSync=False)
        conn.send(b"EHLO client.example\r\n")
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(5)
        self.assertEqual([r.code for r in conn.replies()], [220, 250])
        self.assertFalse(conn.closed)


# Whole reads that break synchronization, each after a greeting, with the
# commands that must be answered before the violation: name -> (setup
# commands, the read, replies before the 554, hooks that must not run).
VIOLATIONS: dict[str, tuple[list[str], bytes, int, list[str]]] = {
    "before EHLO": ([], b"NOOP\r\nQUIT\r\n", 0, ["NOOP", "QUIT"]),
    "EHLO then more": (
        [],
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n",
        0,
        ["EHLO", "MAIL"],
    ),
    "HELO then more": ([], b"HELO c.example\r\nNOOP\r\n", 0, ["HELO", "NOOP"]),
    "after HELO": (
        ["HELO c.example"],
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n",
        0,
        ["MAIL", "RCPT"],
    ),
    "after EHLO (second EHLO)": (
        ["EHLO c.example"],
        b"NOOP\r\nEHLO again.example\r\nRSET\r\n",
        1,
        ["EHLO#2", "RSET"],
    ),
    "after DATA": (
        ["EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"],
        b"DATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        0,
        ["DATA", "HEADER", "EOM", "QUIT"],
    ),
    "after refused DATA": (
        ["EHLO c.example"],
        b"DATA\r\nQUIT\r\n",
        0,
        ["QUIT"],
    ),
    "after STARTTLS": (["EHLO c.example"], b"STARTTLS\r\nNOOP\r\n", 0, ["NOOP"]),
    "after AUTH": (["EHLO c.example"], b"AUTH PLAIN\r\nNOOP\r\n", 0, ["NOOP"]),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_pipeliningViolation(name: str) -> None:
    """
    Input sent ahead where the client must wait: the commands before the
    offending one are answered, then 554 5.5.0 and close; the offending
    command and everything after it are never executed.
    """
    setup, data, before, forbidden = VIOLATIONS[name]
    conn = connect()
    for line in setup:
        assert conn.command(line).code // 100 == 2
    ehlos = conn.handler.names().count("EHLO")
    conn.send(data)
    assertViolation(conn, before)
    names = conn.handler.names()
    for hook in forbidden:
        if hook == "EHLO#2":
            assert names.count("EHLO") == ehlos, names
        else:
            assert hook not in names, (hook, names)


def test_withoutPipeliningExtension() -> None:
    """
    With PIPELINING turned off, commands pipelined after EHLO are a
    violation too.
    """
    conn = connect(pipelining=False)
    conn.command("EHLO c.example")
    conn.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assertViolation(conn)
    assert "MAIL" not in conn.handler.names()


def test_violationInsideRead() -> None:
    """
    A violation in the middle of a read that started legitimately: the
    legitimate commands are answered in order, then 554.
    """
    conn = connect()
    conn.command("EHLO c.example")
    conn.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
        b"DATA\r\nSubject: smuggled\r\n"
    )
    replies = conn.replies()
    assert [r.code for r in replies] == [250, 250, 554]
    assert conn.closed
    assert "DATA" not in conn.handler.names()
    assert "ABORT" in conn.handler.names()


class LegitimatePipeliningTests(SynchronousTestCase):
    """
    What RFC 2920 allows after EHLO offered PIPELINING.
    """

    def test_envelopeThenData(self) -> None:
        """
        MAIL, RCPT, RCPT, DATA in one read; then the message and the next
        transaction's envelope in one read; then the message and QUIT.
        """
        conn = connect()
        conn.command("EHLO c.example")
        envelope = (
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        conn.send(envelope)
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250, 354])
        conn.send(b"Subject: one\r\n\r\nfirst\r\n.\r\n" + envelope)
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250, 250, 354])
        conn.send(b"Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 221])
        self.assertEqual(conn.handler.names().count("EOM"), 2)
        self.assertEqual(conn.handler.body(), b"first\r\nsecond\r\n")
        self.assertNotIn(b"5.5.0", conn.transport.value())

    def test_commandsNotEndingAGroup(self) -> None:
        """
        RSET, NOOP, VRFY, HELP, MAIL and RCPT may be followed by more input.
        """
        conn = connect()
        conn.command("EHLO c.example")
        conn.send(
            b"RSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nMAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<b@example.net>\r\nRSET\r\nQUIT\r\n"
        )
        self.assertEqual(
            [r.code for r in conn.replies()], [250, 250, 252, 214, 250, 250, 250, 221]
        )

    def test_pendingHookThenMoreInput(self) -> None:
        """
        A slow MAIL hook (input paused, more arriving meanwhile) does not
        turn legitimate pipelining into a violation.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(MAIL=lambda h, s, p: d))
        conn.command("EHLO c.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\n")
        conn.send(b"RCPT TO:<b@example.net>\r\n")
        conn.send(b"DATA\r\n")
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 354])

    def test_waitingClientNeverViolates(self) -> None:
        """
        A client that waits for every reply (HELO session, no pipelining)
        is never refused, through a whole transaction.
        """
        conn = connect()
        for line, code in [
            ("HELO c.example", 250),
            ("MAIL FROM:<a@example.org>", 250),
            ("RCPT TO:<b@example.net>", 250),
        ]:
            self.assertEqual(conn.command(line).code, code)
        reply = conn.sendMessage(b"Subject: s\r\n\r\nhi\r\n")
        self.assertEqual(reply.code, 250)
        self.assertEqual(conn.command("QUIT").code, 221)


def test_replyAfterViolationIsTheLast() -> None:
    """
    After a violation nothing more is written, even when a pending hook
    answers later.
    """
    d: Deferred[Any] = Deferred()
    conn = connect(recorderFactory(NOOP=lambda h: d))
    conn.command("EHLO c.example")
    conn.send(b"NOOP\r\n")
    conn.send(b"EHLO x\r\nQUIT\r\n")
    # NOOP is pending; the EHLO followed by QUIT is the violation, read
    # once NOOP answers.
    d.callback(Reply(250, "noop done"))
    replies = conn.replies()
    assert [(r.code, r.enhanced) for r in replies] == [(250, "2.0.0"), SYNC_ERROR]
    assert conn.closed
    assert isinstance(conn.handler, Recorder)
    assert conn.handler.names().count("EHLO") == 1
