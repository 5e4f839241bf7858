"""
Issue 4, CHUNKING (RFC 3030): C{BDAT n [LAST]} chunks stream through the
same HEADER/EOH/BODY/EOM hooks as DATA, with no dot-unstuffing; refused
chunks are still consumed and never read as commands; malformed BDAT closes
the connection. In memory (L{SMTPTestConnection}), no sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import Reply
from esmtpkit.testing import SMTPTestConnection

from .test_extensions import bdat
from .test_protocol import (
    Call,
    Recorder,
    collapsed,
    connect,
    openTransaction,
    recorderFactory,
)


def _saveRawHeaders(handler: Recorder) -> None:
    transaction = handler.session.transaction
    assert transaction is not None
    handler.saved["rawHeaders"] = transaction.rawHeaders


def bdatConnection(**settings: Any) -> SMTPTestConnection:
    """
    A connection to a L{Recorder} that keeps the raw headers it is given at
    EOH (in C{saved}), with a transaction open (EHLO, MAIL, RCPT).
    """
    conn = connect(recorderFactory(EOH=_saveRawHeaders), **settings)
    assert conn.command("EHLO client.example").code == 250
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command("RCPT TO:<bob@example.net>").code == 250
    return conn


def contentCalls(conn: SMTPTestConnection) -> list[Call]:
    """
    The hook calls from the first DATA (which opens a BDAT message) on,
    BODY runs joined.
    """
    names = conn.handler.names()
    return collapsed(conn.handler.calls[names.index("DATA") :])


def received(conn: SMTPTestConnection) -> bytes:
    """
    The message as the handler got it: raw headers, then the BODY bytes.
    """
    raw: bytes = conn.handler.saved.get("rawHeaders", b"")
    body: bytes = conn.handler.body()
    return raw + body


class StreamingTests(SynchronousTestCase):
    """
    Chunks go through the content hooks exactly.
    """

    def test_headersSplitAcrossChunks(self) -> None:
        """
        Header lines (and a folded one) split across chunks, and the body
        split too: HEADER, EOH and BODY get exactly the message; each chunk
        but the last is answered 250 with its size, the last with EOM's
        reply.
        """
        message = (
            b"Subject: split\r\nX-Folded: one\r\n two\r\n\r\nbody line\r\nmore\r\n"
        )
        cuts = [3, 17, 18, 30, 41, 50]
        conn = bdatConnection()
        pieces = [
            message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)
        ]
        for piece in pieces[:-1]:
            reply = bdat(conn, piece)
            self.assertEqual(
                reply, Reply(250, f"{len(piece)} octets received", enhanced="2.0.0")
            )
        self.assertNotIn("EOM", conn.handler.names())
        reply = bdat(conn, pieces[-1], last=True)
        self.assertEqual((reply.code, reply.enhanced), (250, "2.0.0"))
        self.assertIn("Message accepted", reply.text)
        self.assertEqual(
            contentCalls(conn),
            [
                ("DATA", ()),
                ("HEADER", ("Subject", "split")),
                ("HEADER", ("X-Folded", "one two")),
                ("EOH", ()),
                ("BODY", (b"body line\r\nmore\r\n",)),
                ("EOM", ()),
            ],
        )
        self.assertEqual(received(conn), message)
        self.assertEqual(conn.handler.names().count("DATA"), 1)
        self.assertEqual(conn.session.messages, 1)

    def test_noDotUnstuffing(self) -> None:
        """
        A chunk holding CRLF.CRLF, a lone dot line and dot-stuffed lines is
        content: nothing ends early, no dot is removed.
        """
        message = b"Subject: dots\r\n\r\n.\r\n..two\r\nx\r\n.\r\n.\r\nQUIT\r\n"
        conn = bdatConnection()
        self.assertEqual(bdat(conn, message, last=True).code, 250)
        self.assertEqual(received(conn), message)
        self.assertNotIn("QUIT", conn.handler.names())
        self.assertFalse(conn.closed)
        self.assertEqual(conn.handler.names().count("EOM"), 1)

    def test_bodyBytesExact(self) -> None:
        """
        Every byte value in the body arrives exactly, whatever the chunk
        sizes (chunkSize small, so BODY is called many times).
        """
        body = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 4 + b"\r\n"
        message = b"\r\n" + body
        conn = bdatConnection(chunkSize=10)
        for start in range(0, len(message), 97):
            self.assertEqual(bdat(conn, message[start : start + 97]).code, 250)
        self.assertEqual(bdat(conn, b"", last=True).code, 250)
        self.assertEqual(conn.handler.body(), body)
        chunks = [args[0] for name, args in conn.handler.calls if name == "BODY"]
        self.assertTrue(all(0 < len(c) <= 10 for c in chunks))

    def test_bdatZeroLast(self) -> None:
        """
        C{BDAT 0 LAST} ends a message sent in earlier chunks (the header
        section ends there if it had not).
        """
        conn = bdatConnection()
        self.assertEqual(bdat(conn, b"Subject: s\r\n").code, 250)
        self.assertEqual(bdat(conn, b"", last=True).code, 250)
        self.assertEqual(
            contentCalls(conn),
            [("DATA", ()), ("HEADER", ("Subject", "s")), ("EOH", ()), ("EOM", ())],
        )
        self.assertEqual(received(conn), b"Subject: s\r\n")

    def test_bdatZeroLastOnly(self) -> None:
        """
        C{BDAT 0 LAST} alone delivers an empty message.
        """
        conn = bdatConnection()
        reply = bdat(conn, b"", last=True)
        self.assertEqual(reply.code, 250)
        self.assertEqual(contentCalls(conn), [("DATA", ()), ("EOH", ()), ("EOM", ())])
        self.assertEqual(received(conn), b"")

    def test_headerWithoutNewlineAtEnd(self) -> None:
        """
        A last chunk that ends inside a header line still gives that header.
        """
        conn = bdatConnection()
        self.assertEqual(bdat(conn, b"A: 1\r\nB: 2", last=True).code, 250)
        self.assertEqual(
            contentCalls(conn)[:4],
            [("DATA", ()), ("HEADER", ("A", "1")), ("HEADER", ("B", "2")), ("EOH", ())],
        )
        self.assertEqual(received(conn), b"A: 1\r\nB: 2")

    def test_twoMessages(self) -> None:
        """
        After a BDAT LAST, a new transaction can use BDAT again.
        """
        conn = bdatConnection()
        self.assertEqual(bdat(conn, b"\r\none\r\n", last=True).code, 250)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)
        self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 250)
        self.assertEqual(bdat(conn, b"\r\ntwo\r\n", last=True).code, 250)
        self.assertEqual(conn.handler.names().count("EOM"), 2)
        self.assertEqual(conn.handler.body(), b"one\r\ntwo\r\n")

    def test_normalizeCRLFAcrossChunks(self) -> None:
        """
        With the normalize policy, a CRLF split between two chunks stays one
        CRLF, and a bare LF becomes CRLF.
        """
        conn = bdatConnection(bareLineEndings="normalize")
        self.assertEqual(bdat(conn, b"\r\nline one\r").code, 250)
        self.assertEqual(bdat(conn, b"\nline\ntwo\r\n", last=True).code, 250)
        self.assertEqual(conn.handler.body(), b"line one\r\nline\r\ntwo\r\n")

    def test_dataHookRefusesBdat(self) -> None:
        """
        The first chunk opens the message through DATA; if DATA refuses,
        the chunk is consumed and gets DATA's reply, and nothing is
        delivered.
        """
        conn = connect(recorderFactory(DATA=lambda h: (554, "5.7.1 no mail today")))
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        reply = bdat(conn, b"RSET\r\nQUIT\r\n", last=True)
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"))
        names = conn.handler.names()
        self.assertNotIn("RSET", names)
        self.assertNotIn("QUIT", names)
        self.assertNotIn("EOM", names)
        self.assertNotIn("BODY", names)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_asyncDataHook(self) -> None:
        """
        While an asynchronous DATA decides on the first chunk, its bytes
        wait (never read as commands); then they are content.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(DATA=lambda h: d))
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        conn.send(b"BDAT 12 LAST\r\n\r\nQUIT\r\nRSET")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.transport.producerState, "paused")
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertEqual(conn.handler.body(), b"QUIT\r\nRSET")
        self.assertNotIn("QUIT", conn.handler.names())


class RefusalTests(SynchronousTestCase):
    """
    BDAT where it is not allowed: the chunk is still consumed, never
    parsed as commands.
    """

    def assertConsumed(self, conn: SMTPTestConnection, code: int) -> None:
        """
        A refused BDAT whose chunk holds QUIT and RSET lines: the refusal
        C{code}, neither command executed, the connection open and the next
        command answered.
        """
        reply = bdat(conn, b"RSET\r\nQUIT\r\n")
        self.assertEqual(reply.code, code)
        self.assertEqual(reply.enhanced, f"{code // 100}.5.1")
        names = conn.handler.names()
        self.assertNotIn("QUIT", names)
        self.assertNotIn("RSET", names)
        self.assertNotIn("UNKNOWN", names)
        self.assertFalse(conn.closed)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_withoutMail(self) -> None:
        """
        BDAT without MAIL: 503, chunk consumed.
        """
        conn = connect()
        conn.command("EHLO client.example")
        self.assertConsumed(conn, 503)
        self.assertNotIn("DATA", conn.handler.names())

    def test_withoutRcpt(self) -> None:
        """
        BDAT after MAIL but without RCPT: 503, chunk consumed.
        """
        conn = connect()
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        self.assertConsumed(conn, 503)
        self.assertNotIn("DATA", conn.handler.names())

    def test_withoutMailLast(self) -> None:
        """
        BDAT ... LAST without a transaction: 503, chunk consumed.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = bdat(conn, b"QUIT\r\n", last=True)
        self.assertEqual(reply.code, 503)
        self.assertNotIn("QUIT", conn.handler.names())
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_chunkingOff(self) -> None:
        """
        With CHUNKING off, BDAT is not offered: 502, chunk consumed.
        """
        conn = connect(chunking=False)
        openTransaction(self, conn)
        self.assertConsumed(conn, 502)

    def test_afterHelo(self) -> None:
        """
        After HELO (no extensions), BDAT: 502, chunk consumed.
        """
        conn = connect()
        conn.command("HELO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        self.assertConsumed(conn, 502)

    def test_dataAfterBdat(self) -> None:
        """
        DATA after a BDAT chunk in the same transaction: 503 5.5.1, and the
        line after it is a command; the message can still be finished with
        BDAT LAST.
        """
        conn = bdatConnection()
        self.assertEqual(bdat(conn, b"Subject: s\r\n\r\n").code, 250)
        reply = conn.command("DATA")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        self.assertEqual(conn.handler.names().count("DATA"), 1)
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertEqual(bdat(conn, b"body\r\n", last=True).code, 250)
        self.assertEqual(received(conn), b"Subject: s\r\n\r\nbody\r\n")

    def test_rsetDuringBdat(self) -> None:
        """
        RSET between chunks aborts the message: ABORT, no EOM; a later BDAT
        without a transaction is refused and consumed.
        """
        conn = bdatConnection()
        self.assertEqual(bdat(conn, b"Subject: s\r\n").code, 250)
        self.assertEqual(conn.command("RSET").code, 250)
        self.assertIn("ABORT", conn.handler.names())
        self.assertEqual(bdat(conn, b"QUIT\r\n", last=True).code, 503)
        self.assertNotIn("EOM", conn.handler.names())
        self.assertNotIn("QUIT", conn.handler.names())


class MalformedTests(SynchronousTestCase):
    """
    A BDAT whose size cannot be read: 501 and close (the chunk boundary is
    unknown, so nothing after it may be read as commands).
    """

    def test_malformed(self) -> None:
        """
        Each malformed BDAT gets 501 5.5.4 and the connection is closed;
        the bytes after it are never executed; ABORT and DISCONNECT follow.
        """
        for line in (
            b"BDAT",
            b"BDAT x",
            b"BDAT -1",
            b"BDAT 1.5",
            b"BDAT 10 NOTLAST",
            b"BDAT 10 LAST more",
            b"BDAT 1234567890123456",
            b"BDAT 0x10",
        ):
            conn = bdatConnection()
            conn.send(line + b"\r\nRSET\r\nQUIT\r\n")
            replies = conn.replies()
            self.assertEqual(
                [(r.code, r.enhanced) for r in replies], [(501, "5.5.4")], line
            )
            self.assertTrue(conn.closed, line)
            names = conn.handler.names()
            self.assertNotIn("RSET", names, line)
            self.assertNotIn("QUIT", names, line)
            self.assertEqual(names[-2:], ["ABORT", "DISCONNECT"], line)

    def test_lowercaseLast(self) -> None:
        """
        C{last} in any case is fine, as is the verb in lower case.
        """
        conn = bdatConnection()
        conn.send(b"bdat 4 last\r\n\r\nhi")
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertIn("EOM", conn.handler.names())


SESSION = (
    b"BDAT 20\r\n"
    b"Subject: x\r\nA: b\r\n\r\n"  # 20 bytes: the header section
    b"BDAT 15\r\n"
    b"line\r\n.\r\nQUIT\r\n"  # 15 bytes of body
    b"BDAT 0 LAST\r\n"
    b"NOOP\r\n"
)


class SplitTests(SynchronousTestCase):
    """
    Chunks split over reads, and BDATs pipelined in one read.
    """

    def feed(
        self, pieces: list[bytes]
    ) -> tuple[list[Call], list[tuple[int, str | None]]]:
        conn = bdatConnection(chunkSize=4)
        for piece in pieces:
            conn.send(piece)
        return contentCalls(conn), [(r.code, r.enhanced) for r in conn.replies()]

    EXPECTED_CALLS = [
        ("DATA", ()),
        ("HEADER", ("Subject", "x")),
        ("HEADER", ("A", "b")),
        ("EOH", ()),
        ("BODY", (b"line\r\n.\r\nQUIT\r\n",)),
        ("EOM", ()),
        ("NOOP", ()),
    ]
    EXPECTED_REPLIES = [(250, "2.0.0")] * 4

    def test_pipelinedInOneRead(self) -> None:
        """
        Three BDATs and a NOOP in one read: every chunk read exactly,
        replies in order, nothing in a chunk executed.
        """
        self.assertEqual(len(b"Subject: x\r\nA: b\r\n\r\n"), 20)
        self.assertEqual(len(b"line\r\n.\r\nQUIT\r\n"), 15)
        calls, replies = self.feed([SESSION])
        self.assertEqual(calls, self.EXPECTED_CALLS)
        self.assertEqual(replies, self.EXPECTED_REPLIES)

    def test_everySplit(self) -> None:
        """
        The same session split in two reads at every offset, and byte by
        byte, gives the same calls and replies.
        """
        for i in range(1, len(SESSION)):
            got = self.feed([SESSION[:i], SESSION[i:]])
            self.assertEqual(got, (self.EXPECTED_CALLS, self.EXPECTED_REPLIES), i)
        bytewise = [SESSION[i : i + 1] for i in range(len(SESSION))]
        self.assertEqual(
            self.feed(bytewise), (self.EXPECTED_CALLS, self.EXPECTED_REPLIES)
        )

    def test_everyThreeWaySplitOfAChunk(self) -> None:
        """
        One chunk cut into three reads at any two offsets.
        """
        chunk = b"\r\nab\r\n.\r\ncd"
        data = b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"
        for i in range(1, len(data)):
            for j in range(i + 1, len(data)):
                conn = bdatConnection()
                for piece in (data[:i], data[i:j], data[j:]):
                    conn.send(piece)
                codes = [r.code for r in conn.replies()]
                self.assertEqual(codes, [250, 250], (i, j))
                self.assertEqual(conn.handler.body(), b"ab\r\n.\r\ncd", (i, j))

    def test_pipelinedWithEnvelope(self) -> None:
        """
        MAIL, RCPT and BDAT ... LAST pipelined in one read after EHLO (BDAT
        need not wait for a reply), then QUIT.
        """
        conn = connect()
        conn.command("EHLO client.example")
        conn.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            b"BDAT 9 LAST\r\n\r\nhello\r\nQUIT\r\n"
        )
        self.assertEqual([r.code for r in conn.replies()], [250, 250, 250, 221])
        self.assertEqual(conn.handler.body(), b"hello\r\n")
        self.assertTrue(conn.closed)
