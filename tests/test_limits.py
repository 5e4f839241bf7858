"""
Issue 4, limits: command line length, header line length during DATA,
recipients per transaction, the error budget, the idle timeout, the deadline
of message content (a trickling client during DATA or BDAT), hook timeouts,
connection limits (total and per IP), and envelope address syntax and
lengths. In memory (StringTransport and a fake Clock), no sockets.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPFactory, ESMTPHandler, Reply
from esmtpkit.testing import LogCollector, SMTPTestConnection, parseReplies

from .test_protocol import Recorder, connect, openTransaction, recorderFactory

HOSTNAME = "mx.example.test"


class LineLengthTests(SynchronousTestCase):
    """
    An over-long command line, and an over-long header line in DATA.
    """

    LONG = b"NOOP " + b"QUIT RSET MAIL FROM:<x@example.org> " * 20 + b"\r\n"

    def test_commandLineEverySplit(self) -> None:
        """
        A command line over maxLineLength (full of command words) split in
        two reads at every offset: exactly one 500 5.5.6, nothing inside it
        executed, and the following command answered.
        """
        data = self.LONG + b"HELP\r\n"
        self.assertGreater(len(self.LONG), 512)
        for i in range(1, len(data)):
            conn = connect(maxLineLength=510)
            conn.command("EHLO client.example")
            conn.send(data[:i])
            conn.send(data[i:])
            replies = [(r.code, r.enhanced) for r in conn.replies()]
            self.assertEqual(replies, [(500, "5.5.6"), (214, "2.0.0")], i)
            names = conn.handler.names()
            self.assertEqual(names[-1], "HELP", i)
            for hook in ("NOOP", "QUIT", "RSET", "MAIL", "UNKNOWN"):
                self.assertNotIn(hook, names, (i, hook))
            self.assertFalse(conn.closed, i)

    def test_commandLineByteByByte(self) -> None:
        """
        The same, one byte per read.
        """
        conn = connect(maxLineLength=510)
        conn.command("EHLO client.example")
        for byte in self.LONG + b"HELP\r\n":
            conn.send(bytes([byte]))
        self.assertEqual([r.code for r in conn.replies()], [500, 214])

    def test_repeatedLongLines(self) -> None:
        """
        Several long lines in a row each get their own 500 5.5.6.
        """
        conn = connect(maxLineLength=510, softErrorLimit=0)
        conn.command("EHLO client.example")
        conn.send(self.LONG * 3 + b"NOOP\r\n")
        self.assertEqual([r.code for r in conn.replies()], [500, 500, 500, 250])

    HEADER_MESSAGE = (
        b"Subject: fine\r\n"
        b"X-Long: " + b"QUIT\r" * 200 + b"\r\n"
        b"RSET\r\n"
        b"\r\n"
        b"MAIL FROM:<smuggled@example.org>\r\n"
        b"QUIT\r\n"
        b".\r\n"
        b"NOOP\r\n"
    )

    def test_headerLineEverySplit(self) -> None:
        """
        A header line over the limit during DATA, split at every offset:
        the message is drained; nothing inside it is a command; 552 5.3.4
        only after the real end of data; ABORT, no EOM; the NOOP after the
        end is answered.
        """
        data = self.HEADER_MESSAGE
        for i in range(1, len(data)):
            conn = connect(maxHeaderSize=400)
            openTransaction(self, conn)
            self.assertEqual(conn.command("DATA").code, 354)
            conn.send(data[:i])
            conn.send(data[i:])
            replies = [(r.code, r.enhanced) for r in conn.replies()]
            self.assertEqual(replies, [(552, "5.3.4"), (250, "2.0.0")], i)
            names = conn.handler.names()
            self.assertEqual(names.count("MAIL"), 1, i)
            for hook in ("QUIT", "RSET", "EOM", "UNKNOWN"):
                self.assertNotIn(hook, names, (i, hook))
            self.assertEqual(names.count("ABORT"), 1, i)
            self.assertEqual(names[-1], "NOOP", i)

    def test_headerLineNoReplyBeforeEnd(self) -> None:
        """
        No reply is written while the refused message is still coming,
        and ABORT comes at once.
        """
        conn = connect(maxHeaderSize=400)
        openTransaction(self, conn)
        conn.command("DATA")
        conn.send(self.HEADER_MESSAGE[:-9])
        self.assertEqual(conn.replies(), [])
        self.assertIn("ABORT", conn.handler.names())
        conn.send(self.HEADER_MESSAGE[-9:])
        self.assertEqual([r.code for r in conn.replies()], [552, 250])


class RecipientLimitTests(SynchronousTestCase):
    """
    maxRecipients per transaction.
    """

    def test_cap(self) -> None:
        """
        Past maxRecipients: 452 4.5.3, RCPT not called, the transaction
        goes on with the accepted ones; the cap is per transaction.
        """

        def eom(handler: Recorder) -> None:
            transaction = handler.session.transaction
            assert transaction is not None
            handler.saved["recipients"] = list(transaction.recipients)

        conn = connect(recorderFactory(EOM=eom), maxRecipients=3)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        for n in range(3):
            self.assertEqual(conn.command(f"RCPT TO:<r{n}@example.net>").code, 250)
        for n in range(3, 5):
            reply = conn.command(f"RCPT TO:<r{n}@example.net>")
            self.assertEqual((reply.code, reply.enhanced), (452, "4.5.3"))
        self.assertEqual(conn.handler.names().count("RCPT"), 3)
        self.assertEqual(conn.sendMessage(b"Subject: s\r\n\r\nhi\r\n").code, 250)
        self.assertEqual(
            [r.address for r in conn.handler.saved["recipients"]],
            ["r0@example.net", "r1@example.net", "r2@example.net"],
        )
        conn.command("MAIL FROM:<a@example.org>")
        for n in range(3):
            self.assertEqual(conn.command(f"RCPT TO:<s{n}@example.net>").code, 250)
        self.assertEqual(conn.command("RCPT TO:<s3@example.net>").code, 452)

    def test_refusedRecipientsDoNotCount(self) -> None:
        """
        Recipients the handler refused do not use up the cap.
        """

        def rcpt(handler: Recorder, recipient: str, params: Any) -> Any:
            return (550, "no") if recipient.startswith("bad") else None

        conn = connect(recorderFactory(RCPT=rcpt), maxRecipients=2, softErrorLimit=0)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        for n in range(4):
            self.assertEqual(conn.command(f"RCPT TO:<bad{n}@example.net>").code, 550)
        self.assertEqual(conn.command("RCPT TO:<g1@example.net>").code, 250)
        self.assertEqual(conn.command("RCPT TO:<g2@example.net>").code, 250)
        self.assertEqual(conn.command("RCPT TO:<g3@example.net>").code, 452)


class ErrorBudgetTests(SynchronousTestCase):
    """
    Every 4xx/5xx reply counts; past the soft limit the session slows down
    more and more; at the hard limit, 421 4.7.0 and close.
    """

    def test_softLimitGrowingDelay(self) -> None:
        """
        Errors up to the soft limit are answered at once. After the first
        error past it, the next reply waits errorDelay seconds; after the
        next error, twice as long; input is paused meanwhile.
        """
        conn = connect(softErrorLimit=2, hardErrorLimit=0, errorDelay=1.5)
        conn.command("EHLO client.example")
        for _ in range(3):  # errors 1 and 2 (at the limit), 3 (past it)
            self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 503)
        # Error 3 was past the limit: the next command waits 1.5 s.
        conn.send(b"RCPT TO:<b@example.net>\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.transport.producerState, "paused")
        conn.clock.advance(1.49)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.01)
        self.assertEqual([r.code for r in conn.replies()], [503])
        # Error 4: the next reply waits 3 s, even for a good command.
        conn.send(b"NOOP\r\n")
        conn.clock.advance(2.99)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.01)
        self.assertEqual([r.code for r in conn.replies()], [250])
        # A good command adds no delay of its own.
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertFalse(conn.closed)

    def test_handlerErrorsCount(self) -> None:
        """
        Error replies from the handler count like the server's own.
        """
        conn = connect(
            recorderFactory(VRFY=lambda h, a: (550, "no")),
            softErrorLimit=1,
            hardErrorLimit=0,
            errorDelay=10,
        )
        conn.command("EHLO client.example")
        conn.command("VRFY a")
        conn.command("VRFY b")
        conn.send(b"NOOP\r\n")
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(10)
        self.assertEqual([r.code for r in conn.replies()], [250])

    def test_hardLimit(self) -> None:
        """
        At the hard limit the error reply is followed by 421 4.7.0 and the
        connection closes; pipelined input after it is never executed.
        """
        conn = connect(softErrorLimit=0, hardErrorLimit=4)
        conn.command("EHLO client.example")
        for _ in range(3):
            self.assertEqual(conn.command("DATA").code, 503)
        self.assertFalse(conn.closed)
        conn.send(b"XYZZY\r\nNOOP\r\n")
        replies = conn.replies()
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(500, "5.5.2"), (421, "4.7.0")]
        )
        self.assertTrue(conn.closed)
        names = conn.handler.names()
        self.assertNotIn("NOOP", names)
        self.assertEqual(names[-1], "DISCONNECT")

    def test_defaultsAllowTenQuickErrors(self) -> None:
        """
        With the defaults (soft 10, hard 20), ten errors come back at once
        and the twentieth ends the session.
        """
        conn = connect()
        conn.command("EHLO client.example")
        for _ in range(10):
            self.assertEqual(conn.command("DATA").code, 503)
        for n in range(11, 20):
            conn.send(b"DATA\r\n")
            conn.clock.advance(1000)
            self.assertEqual([r.code for r in conn.replies()], [503], n)
        conn.send(b"DATA\r\n")
        conn.clock.advance(1000)
        self.assertEqual([r.code for r in conn.replies()], [503, 421])
        self.assertTrue(conn.closed)


class TimeoutTests(SynchronousTestCase):
    """
    The idle timeout, the deadline of message content, hook timeouts.
    """

    def test_idleTimeout(self) -> None:
        """
        Silent for idleTimeout seconds: 421 4.4.2, close, ABORT of the open
        transaction, DISCONNECT.
        """
        conn = connect(idleTimeout=30)
        openTransaction(self, conn)
        conn.clock.advance(29.9)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.1)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"))
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])

    def trickle(
        self, conn: SMTPTestConnection, step: float, size: int, count: int
    ) -> None:
        """
        Send C{size} bytes of body every C{step} seconds, C{count} times,
        stopping once the connection is closed.
        """
        for _ in range(count):
            if conn.closed:
                return
            conn.send(b"x" * size)
            conn.clock.advance(step)

    def assertTimedOutMessage(self, conn: SMTPTestConnection) -> None:
        replies = conn.replies()
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(421, "4.4.2")], replies
        )
        self.assertTrue(conn.closed)
        names = conn.handler.names()
        self.assertNotIn("EOM", names)
        self.assertIn("ABORT", names)
        self.assertEqual(names[-1], "DISCONNECT")
        self.assertEqual(conn.session.messages, 0)

    def test_tricklingDataClient(self) -> None:
        """
        A client sending 10 bytes every 10 s (well under minDataRate, and
        never idle long enough for the idle timeout) gets 421 4.4.2 once
        idleTimeout plus the little its bytes earned has passed.
        """
        conn = connect(idleTimeout=60, minDataRate=100)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: slow\r\n\r\n")
        start = conn.clock.seconds()
        self.trickle(conn, 10, 10, 5)
        self.assertEqual(conn.replies(), [])  # 50 s: not yet
        self.trickle(conn, 10, 10, 10)
        self.assertTimedOutMessage(conn)
        self.assertLess(conn.clock.seconds() - start, 80)

    def test_deadlineAfterManyMessages(self) -> None:
        """
        Messages sent in time leave no timers behind (the deadline's timer
        is moved from one message to the next), and a later message that
        trickles still gets 421 4.4.2 at its own deadline.
        """
        conn = connect(idleTimeout=60, minDataRate=100)
        for n in range(20):
            openTransaction(self, conn)
            self.assertEqual(conn.command("DATA").code, 354)
            self.assertEqual(conn.command(f"Subject: {n}\r\n\r\nbody\r\n.").code, 250)
            conn.clock.advance(5)
        # The idle timer and the deadline's timer, whatever the count.
        self.assertLessEqual(len(conn.clock.getDelayedCalls()), 2)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        start = conn.clock.seconds()
        self.trickle(conn, 10, 10, 5)
        self.assertEqual(conn.replies(), [])
        self.trickle(conn, 10, 10, 10)
        replies = conn.replies()
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(421, "4.4.2")])
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names()[-3:], ["DATA", "ABORT", "DISCONNECT"])
        self.assertEqual(conn.session.messages, 20)
        self.assertLess(conn.clock.seconds() - start, 80)

    def test_tricklingBdatClient(self) -> None:
        """
        The same for a BDAT chunk that trickles in.
        """
        conn = connect(idleTimeout=60, minDataRate=100)
        openTransaction(self, conn)
        conn.send(b"BDAT 100000 LAST\r\n\r\n")
        start = conn.clock.seconds()
        self.trickle(conn, 10, 10, 5)
        self.assertEqual(conn.replies(), [])
        self.trickle(conn, 10, 10, 10)
        self.assertTimedOutMessage(conn)
        self.assertLess(conn.clock.seconds() - start, 80)

    def test_fastClientLongMessage(self) -> None:
        """
        A client sending a large message steadily above minDataRate may
        take far longer than idleTimeout in all.
        """
        conn = connect(idleTimeout=60, minDataRate=500)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: big\r\n\r\n")
        line = b"y" * 998 + b"\r\n"
        for _ in range(200):  # 200 s, 1000 bytes/s
            conn.send(line)
            conn.clock.advance(1)
        self.assertEqual(conn.replies(), [])
        conn.send(b".\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertFalse(conn.closed)
        self.assertIn("EOM", conn.handler.names())

    def test_fastBdatClientManyChunks(self) -> None:
        """
        BDAT chunks sent steadily, with short pauses between them, over far
        longer than idleTimeout in all, are delivered.
        """
        conn = connect(idleTimeout=60, minDataRate=500)
        openTransaction(self, conn)
        chunk = b"z" * 998 + b"\r\n"
        for _ in range(30):
            conn.send(b"BDAT %d\r\n" % len(chunk))
            conn.send(chunk)
            self.assertEqual([r.code for r in conn.replies()], [250])
            conn.clock.advance(5)
        conn.send(b"BDAT 0 LAST\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertIn("EOM", conn.handler.names())

    def test_slowHookNotCountedAgainstClient(self) -> None:
        """
        A BODY hook that takes longer than idleTimeout does not make the
        client miss its deadline: the message is accepted.
        """
        clock = Clock()
        slow = [True]

        def body(handler: Recorder, chunk: bytes) -> Any:
            if slow[0]:
                slow[0] = False
                return deferLater(clock, 200, lambda: None)
            return None

        conn = connect(
            recorderFactory(BODY=body),
            clock=clock,
            idleTimeout=60,
            minDataRate=100,
            hookTimeout=0,
        )
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: s\r\n\r\nfirst part\r\n")
        self.assertEqual(conn.transport.producerState, "paused")
        for _ in range(200):
            clock.advance(1)
        self.assertEqual(conn.replies(), [])
        self.assertFalse(conn.closed)
        conn.send(b"second part\r\n.\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertEqual(conn.handler.body(), b"first part\r\nsecond part\r\n")

    def test_slowEomNotCountedAgainstClient(self) -> None:
        """
        A slow EOM (longer than idleTimeout) is not a client timeout.
        """
        clock = Clock()
        conn = connect(
            recorderFactory(EOM=lambda h: deferLater(clock, 300, lambda: None)),
            clock=clock,
            idleTimeout=60,
            hookTimeout=0,
        )
        openTransaction(self, conn)
        conn.command("DATA")
        conn.send(b"\r\nbody\r\n.\r\n")
        for _ in range(300):
            clock.advance(1)
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertFalse(conn.closed)

    def test_hookTimeout(self) -> None:
        """
        A hook that never answers: after hookTimeout the client gets 451
        4.3.0, the command did not take effect, and the session goes on.
        """
        conn = connect(recorderFactory(MAIL=lambda h, s, p: Deferred()), hookTimeout=20)
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\n")
        conn.clock.advance(19.9)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.1)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_bodyHookTimeout(self) -> None:
        """
        A BODY hook that never answers refuses the message with 451 4.3.0
        after the end of data; ABORT, no EOM.
        """
        conn = connect(recorderFactory(BODY=lambda h, c: Deferred()), hookTimeout=20)
        openTransaction(self, conn)
        conn.command("DATA")
        conn.send(b"\r\nbody\r\n")
        conn.clock.advance(20)
        self.assertEqual(conn.replies(), [])
        conn.send(b".\r\n")
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertNotIn("EOM", conn.handler.names())
        self.assertIn("ABORT", conn.handler.names())


# -- connection limits ----------------------------------------------------------


class Counted(ESMTPHandler):
    """
    Counts the handlers built and DISCONNECT calls.
    """

    built = 0
    disconnected = 0

    def __init__(self) -> None:
        Counted.built += 1

    def DISCONNECT(self) -> None:
        Counted.disconnected += 1


class Client:
    """
    One in-memory connection to a shared factory.
    """

    def __init__(self, factory: ESMTPFactory, host: str) -> None:
        peer = (
            IPv6Address("TCP", host, 40000)
            if ":" in host
            else IPv4Address("TCP", host, 40000)
        )
        self.transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "192.0.2.250", 25), peerAddress=peer
        )
        self.protocol = factory.buildProtocol(peer)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    @property
    def replies(self) -> list[Reply]:
        replies, rest = parseReplies(self.transport.value())
        assert rest == b""
        return replies

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting) or not self.transport.connected

    def close(self) -> None:
        self.transport.loseConnection()


def limitFactory(**settings: Any) -> ESMTPFactory:
    Counted.built = Counted.disconnected = 0
    settings.setdefault("hostname", HOSTNAME)
    return ESMTPFactory(Counted, clock=Clock(), logObserver=LogCollector(), **settings)


class ConnectionLimitTests(SynchronousTestCase):
    """
    maxConnections and maxConnectionsPerPeer.
    """

    def assertRefused(self, client: Client) -> None:
        """
        The client got one 421 and was disconnected. (The enhanced code on
        the wire is checked by L{test_refusalEnhancedCode}.)
        """
        [reply] = client.replies
        self.assertEqual(reply.code, 421)
        self.assertIn("Too many connections", reply.text)
        self.assertTrue(client.closed)

    def test_refusalEnhancedCode(self) -> None:
        """
        The issue asks for "421 4.7.0" at the greeting for both limits.
        """
        factory = limitFactory(maxConnections=1, maxConnectionsPerPeer=0)
        Client(factory, "192.0.2.1")
        total = Client(factory, "192.0.2.2")
        factory = limitFactory(maxConnectionsPerPeer=1)
        Client(factory, "192.0.2.1")
        perPeer = Client(factory, "192.0.2.1")
        for client in (total, perPeer):
            self.assertTrue(
                client.transport.value().startswith(b"421 4.7.0 "),
                client.transport.value(),
            )

    def assertServed(self, client: Client) -> None:
        [reply] = client.replies
        self.assertEqual(reply.code, 220)
        self.assertFalse(client.closed)

    def test_total(self) -> None:
        """
        The connection past maxConnections gets 421 4.7.0 at the greeting
        and is closed; once one closes, a new one is served.
        """
        factory = limitFactory(maxConnections=2, maxConnectionsPerPeer=0)
        first = Client(factory, "192.0.2.1")
        second = Client(factory, "192.0.2.2")
        self.assertServed(first)
        self.assertServed(second)
        third = Client(factory, "192.0.2.3")
        self.assertRefused(third)
        self.assertEqual(Counted.built, 2)
        self.assertEqual(len(factory.connections), 2)
        first.close()
        self.assertEqual(len(factory.connections), 1)
        self.assertServed(Client(factory, "192.0.2.4"))

    def test_totalAppliesToLoopback(self) -> None:
        """
        The total limit applies to loopback clients too.
        """
        factory = limitFactory(maxConnections=1)
        self.assertServed(Client(factory, "127.0.0.1"))
        self.assertRefused(Client(factory, "127.0.0.1"))

    def test_perPeer(self) -> None:
        """
        Past maxConnectionsPerPeer from one address: 421 4.7.0 and close;
        other addresses are served; the count drops when one closes.
        """
        factory = limitFactory(maxConnectionsPerPeer=2)
        clients = [Client(factory, "198.51.100.7") for _ in range(2)]
        for client in clients:
            self.assertServed(client)
        refused = Client(factory, "198.51.100.7")
        self.assertRefused(refused)
        self.assertServed(Client(factory, "198.51.100.8"))
        clients[0].close()
        self.assertServed(Client(factory, "198.51.100.7"))
        self.assertRefused(Client(factory, "198.51.100.7"))

    def test_loopbackExemptByDefault(self) -> None:
        """
        127.0.0.0/8 and ::1 are exempt from the per-peer limit by default.
        """
        factory = limitFactory(maxConnectionsPerPeer=1)
        for host in ("127.0.0.1", "127.0.0.1", "127.1.2.3", "::1", "::1"):
            self.assertServed(Client(factory, host))

    def test_customExempt(self) -> None:
        """
        connectionLimitExempt replaces the exempt networks.
        """
        factory = limitFactory(
            maxConnectionsPerPeer=1, connectionLimitExempt=("192.0.2.0/24",)
        )
        for _ in range(3):
            self.assertServed(Client(factory, "192.0.2.9"))
        self.assertServed(Client(factory, "127.0.0.1"))
        self.assertRefused(Client(factory, "127.0.0.1"))

    def test_refusedConnectionsDoNotAccumulate(self) -> None:
        """
        Refused connections are forgotten once closed: after many refusals
        the counts are what the open connections say.
        """
        factory = limitFactory(maxConnections=3, maxConnectionsPerPeer=1)
        kept = Client(factory, "203.0.113.1")
        for _ in range(10):
            self.assertRefused(Client(factory, "203.0.113.1"))
        self.assertEqual(list(factory.connections), [kept.protocol])
        kept.close()
        self.assertEqual(list(factory.connections), [])
        self.assertServed(Client(factory, "203.0.113.1"))

    def test_noHandlerForRefused(self) -> None:
        """
        A refused connection never builds a handler (no hook is called).
        """
        factory = limitFactory(maxConnections=1)
        Client(factory, "192.0.2.1")
        refused = Client(factory, "192.0.2.2")
        self.assertEqual(Counted.built, 1)
        self.assertIsNone(refused.protocol.handler)


# -- addresses --------------------------------------------------------------


def _domain(length: int) -> str:
    """
    A valid domain of exactly C{length} octets (labels of up to 63).
    """
    labels = []
    remaining = length
    while remaining > 0:
        size = min(63, remaining)
        if remaining - size == 1:  # never leave a lone dot's worth
            size -= 2
        labels.append("d" * size)
        remaining -= size + 1
    domain = ".".join(labels)
    assert len(domain) == length, (len(domain), length)
    return domain


LOCAL64 = "l" * 64
VALID = [
    "a@b",
    "a.b@example.org",
    "!#$%&'*+-/=?^_`{|}~@example.org",
    '"john doe"@example.org',
    '"a\\"b"@example.org',
    "a@[192.0.2.1]",
    "a@[IPv6:2001:db8::1]",
    LOCAL64 + "@example.org",
    LOCAL64 + "@" + _domain(254 - 65),  # 254 octets: 256 with brackets
    "a@" + _domain(252),  # domain within 255 and path within 256
]
INVALID = [
    "a",
    "a@",
    "a@@b.example",
    "a@b@c.example",
    ".a@example.org",
    "a.@example.org",
    "a..b@example.org",
    "a b@example.org",
    "a\\b@example.org",
    "a@-b.example",
    "a@b-.example",
    "a@b_c.example",
    "a@b..example",
    "a@.example",
    "a@[192.0.2.999]",
    "a@[IPv6:zz::1]",
    "a@[192.0.2.1",
    "l" * 65 + "@example.org",  # local part over 64
    LOCAL64 + "@" + _domain(254 - 64),  # 255 octets: path 257 > 256
    "a@" + "d" * 64 + ".example",  # label over 63
    "a@" + _domain(256),  # domain over 255
]


def test_addressFixtures() -> None:
    """
    (The boundary fixtures have the lengths they claim.)
    """
    assert len(LOCAL64 + "@" + _domain(254 - 65)) == 254
    assert len(LOCAL64 + "@" + _domain(254 - 64)) == 255
    assert len("a@" + _domain(252)) == 254


@pytest.mark.parametrize("address", VALID)
def test_validAddresses(address: str) -> None:
    """
    Valid mailboxes (at the length limits too) are handed to MAIL and RCPT
    exactly.
    """
    conn = connect(softErrorLimit=0, hardErrorLimit=0)
    conn.command("EHLO client.example")
    assert conn.command(f"MAIL FROM:<{address}>").code == 250
    assert conn.command(f"RCPT TO:<{address}>").code == 250
    assert ("MAIL", (address, {})) in conn.handler.calls
    assert ("RCPT", (address, {})) in conn.handler.calls


@pytest.mark.parametrize("address", INVALID)
def test_invalidAddresses(address: str) -> None:
    """
    Malformed or over-long mailboxes: 501 5.1.7 at MAIL, 501 5.1.3 at RCPT,
    and the hook is never called.
    """
    conn = connect(softErrorLimit=0, hardErrorLimit=0)
    conn.command("EHLO client.example")
    reply = conn.command(f"MAIL FROM:<{address}>")
    assert (reply.code, reply.enhanced) == (501, "5.1.7"), reply
    assert "MAIL" not in conn.handler.names()
    assert conn.command("MAIL FROM:<ok@example.org>").code == 250
    reply = conn.command(f"RCPT TO:<{address}>")
    assert (reply.code, reply.enhanced) == (501, "5.1.3"), reply
    assert "RCPT" not in conn.handler.names()
    assert conn.session.transaction.recipients == []


@pytest.mark.parametrize(
    "path", ["<@b.example>", '<"unterminated@example.org>', "<a@b.example", "<<a@b>>"]
)
def test_malformedPaths(path: str) -> None:
    """
    Paths that do not even parse (a source route without a mailbox, an
    unterminated quote or bracket): 501 without reaching the handler.
    """
    conn = connect(softErrorLimit=0, hardErrorLimit=0)
    conn.command("EHLO client.example")
    reply = conn.command(f"MAIL FROM:{path}")
    assert reply.code == 501, reply
    assert "MAIL" not in conn.handler.names()
    assert conn.command("MAIL FROM:<ok@example.org>").code == 250
    reply = conn.command(f"RCPT TO:{path}")
    assert reply.code == 501, reply
    assert "RCPT" not in conn.handler.names()


class RefusalOrderTests(SynchronousTestCase):
    """
    A message that passes the size limit and has a bare line ending gets
    the refusal of whichever comes first in the stream, however the stream
    is split into reads (and whether a BODY hook waits for the bytes).
    """

    def refusal(self, message: bytes, split: bool, bodyHook: bool) -> int:
        class Body(ESMTPHandler):
            def BODY(self, chunk: bytes) -> None:
                pass

        conn = SMTPTestConnection(Body if bodyHook else ESMTPHandler, maxMessageSize=30)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.command("DATA").code, 354)
        wire = message + b".\r\n"
        if split:
            for byte in range(len(wire)):
                conn.send(wire[byte : byte + 1])
        else:
            conn.send(wire)
        [reply] = conn.replies()
        return reply.code

    def test_sizeFirst(self) -> None:
        message = b"Subject: x\r\n\r\n" + b"y" * 20 + b"\r\nbare\nline\r\n"
        for split in (False, True):
            for bodyHook in (False, True):
                self.assertEqual(self.refusal(message, split, bodyHook), 552)

    def test_bareLineEndingFirst(self) -> None:
        message = b"Subject: x\r\n\r\nbare\nline\r\n" + b"y" * 40 + b"\r\n"
        for split in (False, True):
            for bodyHook in (False, True):
                self.assertEqual(self.refusal(message, split, bodyHook), 550)
