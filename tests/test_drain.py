"""
The graceful drain (issue 13), in memory: L{ESMTPFactory.drain} over
L{SMTPTestConnection}s and a fake Clock, no sockets.

  - an idle session gets 421 4.3.2 at once and is closed; one with a hook
    pending gets its reply, then the 421; whatever the client pipelined
    after that reply is not served;
  - a transaction in flight is served to its end (more RCPTs, DATA, the
    rest of the message, a slow EOM that finishes within the timeout):
    the reply that ends it (EOM's 250, RSET's 250) goes out, then the
    421; QUIT's 221 is the last reply;
  - at the deadline every connection left gets 421 4.3.2 and is closed:
    an open transaction (idle, mid-DATA, or with EOM in flight) ends with
    ABORT then DISCONNECT, the EOM in flight is cancelled and nothing it
    answers later is sent, and the message is not counted as accepted;
  - the drain's Deferred fires when the last connection and its hooks are
    done (including a connection the client left while its EOM ran), or
    at the latest the grace period after the deadline, when connections
    still there are aborted; connections made while draining are refused
    with 421 4.3.2;
  - LMTP: one reply per recipient, then the 421; STARTTLS: the 421 comes
    through TLS, after the handshake;
  - the Maildir handler: a message whose EOM is cancelled while its flush
    runs is removed, not moved into new/ (the shutdown deadline, and a
    hook timeout).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from esmtpkit import ESMTPFactory, ESMTPService, Reply, ServerObserver
from esmtpkit.handlers import Maildir
from esmtpkit.security.tls import ServerTLS
from esmtpkit.server.drain import GRACE
from esmtpkit.testing import (
    LMTPTestConnection,
    SMTPTestConnection,
    dotStuff,
    parseReplies,
)

from .helpers import (
    LOOPBACK,
    freePort,
    maildirFiles,
    readReplies,
    readUntilClosed,
    splitReceived,
    tempDir,
    waitUntil,
)
from .test_protocol import Recorder, openTransaction, recorderFactory
from .tlshelpers import TLSTestConnection, sharedPKI

HOSTNAME = "mx.example.test"
SHUTDOWN = (421, "4.3.2", f"{HOSTNAME} Service shutting down")
MESSAGE = b"Subject: drained\r\n\r\nHello.\r\n"


def serverTLS() -> ServerTLS:
    pki = sharedPKI()
    return ServerTLS(str(pki.serverCert), str(pki.serverKey))


def summary(replies: list[Reply]) -> list[tuple[int, str | None]]:
    return [(r.code, r.enhanced) for r in replies]


def shutdownReply(case: SynchronousTestCase, reply: Reply) -> None:
    """
    C{reply} is the drain's 421 4.3.2 with the host name.
    """
    case.assertEqual((reply.code, reply.enhanced, reply.text), SHUTDOWN)


class Outcomes(ServerObserver):
    """
    Records how transactions ended and which connections were refused.
    """

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.refused: list[tuple[str, int]] = []
        self.closed = 0

    def transactionEnded(
        self, session: Any, transaction: Any, outcome: str, replies: Any
    ) -> None:
        self.ended.append(outcome)

    def connectionRefused(self, session: Any, limit: str, reply: Reply) -> None:
        self.refused.append((limit, reply.code))

    def connectionClosed(self, session: Any) -> None:
        self.closed += 1


class Pending(list[Deferred[Any]]):
    """
    The Deferreds a L{pendingHook} returned, in order; C{failures} has the
    failures they got (a cancellation).
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[Failure] = []


def pendingHook(name: str) -> tuple[Any, Pending]:
    """
    A behaviour for L{Recorder} that makes hook C{name} return a new
    unfired Deferred each time (kept in the list returned).
    """
    pending = Pending()

    def record(failure: Failure) -> Failure:
        pending.failures.append(failure)
        return failure

    def hook(handler: Recorder, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        d.addErrback(record)
        pending.append(d)
        return d

    return hook, pending


class DrainTestsMixin:
    """
    Helpers: a connection with observers, and the drain's Deferred.
    """

    def connect(
        self, connection: type[SMTPTestConnection] = SMTPTestConnection, **kw: Any
    ) -> SMTPTestConnection:
        self.outcomes = Outcomes()
        behaviour = kw.pop("behaviour", {})
        return connection(recorderFactory(**behaviour), observers=[self.outcomes], **kw)

    def drain(
        self, conn: SMTPTestConnection, timeout: float | None = None
    ) -> list[None]:
        """
        Start draining C{conn}'s factory; the list returned gets the
        drain's result when it fires.
        """
        fired: list[None] = []
        conn.factory.drain(timeout).addCallback(fired.append)
        return fired


class IdleTests(DrainTestsMixin, SynchronousTestCase):
    """
    Sessions with no transaction open and no hook pending.
    """

    def test_idleAfterEhlo(self) -> None:
        """
        An idle session gets 421 4.3.2 with the host name at once and is
        closed; DISCONNECT runs (no ABORT: nothing was open) and the drain
        is over.
        """
        conn = self.connect()
        conn.command("EHLO client.example")
        fired = self.drain(conn)
        [reply] = conn.replies()
        shutdownReply(self, reply)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")
        self.assertNotIn("ABORT", conn.handler.names())
        self.assertEqual(fired, [None])
        self.assertEqual(self.outcomes.closed, 1)

    def test_idleAfterTransaction(self) -> None:
        """
        After a delivered message the session is idle again: 421 at once.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.assertEqual(conn.sendMessage(MESSAGE).code, 250)
        fired = self.drain(conn)
        shutdownReply(self, conn.replies()[0])
        self.assertTrue(conn.closed)
        self.assertEqual(fired, [None])

    def test_beforeTheGreeting(self) -> None:
        """
        During the greeting delay the 421 is the greeting (RFC 5321 3.1
        allows a 421 there); the delayed greeting never comes.
        """
        conn = self.connect(greetingDelay=5)
        self.assertIsNone(conn.greeting)
        fired = self.drain(conn)
        [reply] = conn.replies()
        shutdownReply(self, reply)
        conn.clock.advance(10)
        self.assertEqual(conn.replies(), [])
        self.assertNotIn("CONNECT", conn.handler.names())
        self.assertEqual(fired, [None])

    def test_enhancedCodesOff(self) -> None:
        """
        Without ENHANCEDSTATUSCODES the 421 goes out without its enhanced
        code, as every reply does then.
        """
        conn = self.connect(enhancedStatusCodes=False)
        conn.command("EHLO client.example")
        self.drain(conn)
        self.assertEqual(
            conn.transport.value().splitlines()[-1],
            f"421 {HOSTNAME} Service shutting down".encode(),
        )

    def test_hookPendingThenIdle(self) -> None:
        """
        A session with a hook pending (a slow NOOP) is not idle: nothing is
        sent until the hook answers; then its reply, then the 421.
        """
        hook, pending = pendingHook("NOOP")
        conn = self.connect(behaviour={"NOOP": hook})
        conn.command("EHLO client.example")
        conn.send(b"NOOP\r\n")
        fired = self.drain(conn)
        self.assertEqual(conn.replies(), [])
        self.assertFalse(conn.closed)
        pending[0].callback(None)
        replies = conn.replies()
        self.assertEqual(summary(replies[:1]), [(250, "2.0.0")])
        shutdownReply(self, replies[1])
        self.assertEqual(len(replies), 2)
        self.assertTrue(conn.closed)
        self.assertEqual(fired, [None])

    def test_pipelinedAfterPendingHook(self) -> None:
        """
        Commands pipelined behind the pending hook are not served once the
        session is idle: the 421 goes out instead of MAIL's reply, and the
        MAIL hook is never called.
        """
        hook, pending = pendingHook("NOOP")
        conn = self.connect(behaviour={"NOOP": hook})
        conn.command("EHLO client.example")
        conn.send(b"NOOP\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<b@x.test>\r\n")
        self.drain(conn)
        pending[0].callback(None)
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [250, 421])
        self.assertNotIn("MAIL", conn.handler.names())
        self.assertTrue(conn.closed)

    def test_errorDelayThenIdle(self) -> None:
        """
        A drain that starts while the session sleeps off an error (past
        the soft error limit) closes it when the sleep is over, before the
        command pipelined behind is served.
        """
        conn = self.connect(softErrorLimit=1, errorDelay=3)
        conn.command("EHLO client.example")
        conn.command("RCPT TO:<x@example.org>")  # 503, the first error
        conn.send(b"RCPT TO:<x@example.org>\r\nNOOP\r\n")  # 503, then a sleep
        self.assertEqual([r.code for r in conn.replies()], [503])
        self.drain(conn)
        self.assertFalse(conn.closed)
        conn.clock.advance(3)
        [reply] = conn.replies()
        shutdownReply(self, reply)
        self.assertNotIn("NOOP", conn.handler.names())

    def test_refusedSessionAfterItsGreeting(self) -> None:
        """
        A session whose CONNECT answered 554 only waits for QUIT: it is
        idle and gets the 421 at once.
        """
        conn = self.connect(behaviour={"CONNECT": lambda h: (554, "No service")})
        assert conn.greeting is not None
        self.assertEqual(conn.greeting.code, 554)
        self.drain(conn)
        shutdownReply(self, conn.replies()[0])
        self.assertTrue(conn.closed)


class TransactionTests(DrainTestsMixin, SynchronousTestCase):
    """
    Transactions in flight are served to their end, within the timeout.
    """

    def test_openTransactionServedToTheEnd(self) -> None:
        """
        With a transaction open, commands are still served while it lasts:
        another RCPT, DATA, the message; EOM's 250 goes out, then the 421.
        The message is accepted, no ABORT.
        """
        conn = self.connect()
        openTransaction(self, conn)
        fired = self.drain(conn)
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.command("RCPT TO:<carol@example.net>").code, 250)
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertEqual(conn.command("DATA").code, 354)
        self.assertEqual(fired, [])
        conn.send(dotStuff(MESSAGE))
        replies = conn.replies()
        self.assertEqual(summary(replies[:1]), [(250, "2.0.0")])
        shutdownReply(self, replies[1])
        self.assertTrue(conn.closed)
        self.assertEqual(self.outcomes.ended, ["accepted"])
        self.assertNotIn("ABORT", conn.handler.names())
        self.assertEqual(conn.session.messages, 1)
        self.assertEqual(fired, [None])

    def test_midDataCompletes(self) -> None:
        """
        A client in the middle of its message keeps sending it: the rest
        is read, the message arrives whole (250), then the 421.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        data = dotStuff(MESSAGE + b"line two\r\n" * 100)
        conn.send(data[:50])
        self.drain(conn)
        conn.clock.advance(20)
        conn.send(data[50:])
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        self.assertEqual(
            conn.handler.body(), (MESSAGE + b"line two\r\n" * 100).split(b"\r\n\r\n")[1]
        )
        self.assertEqual(self.outcomes.ended, ["accepted"])

    def test_pipelinedAfterTheMessage(self) -> None:
        """
        A new transaction pipelined right after the end of data is not
        served: EOM's 250, then the 421; MAIL was called once only.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        self.drain(conn)
        conn.send(
            dotStuff(MESSAGE)
            + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
        )
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        self.assertEqual(conn.handler.names().count("MAIL"), 1)
        self.assertTrue(conn.closed)

    def test_bdatLastThenPipelined(self) -> None:
        """
        The same with BDAT: the chunks of the message are served, the
        LAST one's 250 goes out, then the 421 instead of the next MAIL.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.drain(conn)
        conn.send(b"BDAT 5\r\nSubje")
        self.assertEqual([r.code for r in conn.replies()], [250])
        rest = b"ct: x\r\n\r\nbody\r\n"
        conn.send(b"BDAT %d LAST\r\n" % len(rest) + rest + b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        self.assertEqual(conn.handler.names().count("MAIL"), 1)

    def test_rsetEndsTheTransaction(self) -> None:
        """
        RSET ends the transaction (ABORT): its 250, then the 421.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.drain(conn)
        self.assertEqual(conn.replies(), [])
        conn.send(b"RSET\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        self.assertIn("ABORT", conn.handler.names())
        self.assertEqual(self.outcomes.ended, ["aborted"])

    def test_mailRefusedLeavesTheSessionIdle(self) -> None:
        """
        A MAIL in flight when the drain starts is a transaction in flight;
        refused, it leaves the session idle: its reply, then the 421.
        """
        hook, pending = pendingHook("MAIL")
        conn = self.connect(behaviour={"MAIL": hook})
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<alice@example.org>\r\n")
        self.drain(conn)
        self.assertEqual(conn.replies(), [])
        pending[0].callback((550, "5.7.1 Not from you"))
        self.assertEqual([r.code for r in conn.replies()], [550, 421])

    def test_mailAcceptedGoesOn(self) -> None:
        """
        Accepted, it opens a transaction that is served like any other.
        """
        hook, pending = pendingHook("MAIL")
        conn = self.connect(behaviour={"MAIL": hook})
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<alice@example.org>\r\n")
        self.drain(conn)
        pending[0].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertEqual(conn.command("RCPT TO:<bob@example.net>").code, 250)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        self.assertEqual([r.code for r in conn.replies()], [250, 421])

    def test_quitIsTheLastReply(self) -> None:
        """
        QUIT in a draining session: its 221 closes the connection, with no
        421 after it.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.drain(conn)
        conn.send(b"QUIT\r\n")
        self.assertEqual([r.code for r in conn.replies()], [221])
        self.assertTrue(conn.closed)

    def test_slowEomFinishesInTime(self) -> None:
        """
        An EOM that takes 20 of the 30 seconds: its 250 goes out when it
        answers, then the 421; the message is accepted and the drain over.
        """
        hook, pending = pendingHook("EOM")
        conn = self.connect(behaviour={"EOM": hook})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        fired = self.drain(conn)
        conn.clock.advance(20)
        self.assertEqual(conn.replies(), [])
        self.assertEqual(fired, [])
        pending[0].callback(None)
        replies = conn.replies()
        self.assertEqual(summary(replies[:1]), [(250, "2.0.0")])
        shutdownReply(self, replies[1])
        self.assertEqual(self.outcomes.ended, ["accepted"])
        self.assertNotIn("ABORT", conn.handler.names())
        self.assertEqual(fired, [None])
        conn.clock.advance(60)
        self.assertEqual(conn.replies(), [])


class DeadlineTests(DrainTestsMixin, SynchronousTestCase):
    """
    What is still busy at the deadline is closed with 421 4.3.2, and
    nothing is acknowledged after it.
    """

    def test_slowEomPastTheDeadline(self) -> None:
        """
        An EOM still running at the deadline: the client gets the 421 (no
        250) and the connection closes; the EOM's Deferred is cancelled;
        the transaction ends with ABORT, then DISCONNECT; the message is
        not accepted. Its late answer sends nothing.
        """
        hook, pending = pendingHook("EOM")
        conn = self.connect(behaviour={"EOM": hook})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        fired = self.drain(conn, timeout=5)
        conn.clock.advance(4.9)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.1)
        [reply] = conn.replies()
        shutdownReply(self, reply)
        self.assertTrue(conn.closed)
        [failure] = pending.failures
        self.assertTrue(failure.check(CancelledError))
        names = conn.handler.names()
        self.assertEqual(names[-3:], ["EOM", "ABORT", "DISCONNECT"])
        self.assertEqual(self.outcomes.ended, ["aborted"])
        self.assertEqual(conn.session.messages, 0)
        self.assertEqual(fired, [None])
        pending[0].callback(None)  # too late: ignored
        self.assertEqual(conn.replies(), [])
        # No hook timeout was reported: the hook was cancelled by the drain.
        self.assertEqual(
            [e for e in conn.log.events if e.get("limit") == "hook-timeout"], []
        )

    def test_eomThatIgnoresCancellation(self) -> None:
        """
        A coroutine EOM that swallows the cancellation and answers 250
        anyway: the 250 is not sent, and the message is not accepted (the
        handler gets ABORT after its EOM).
        """
        release: Deferred[None] = Deferred()

        async def stubborn(handler: Recorder) -> Any:
            try:
                await release
            except CancelledError:
                pass
            return (250, "2.0.0 taken anyway")

        conn = self.connect(behaviour={"EOM": stubborn})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        self.drain(conn, timeout=2)
        conn.clock.advance(2)
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertEqual(self.outcomes.ended, ["aborted"])
        self.assertNotIn(b"taken anyway", conn.transport.value())

    def test_slowBodyAtTheDeadline(self) -> None:
        """
        A BODY hook pending at the deadline, the rest of the message queued
        behind it: the hook is cancelled, no further BODY and no EOM are
        called, the transaction ends with ABORT.
        """
        hook, pending = pendingHook("BODY")
        conn = self.connect(behaviour={"BODY": hook}, chunkSize=16)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"))
        self.assertEqual(conn.handler.names().count("BODY"), 1)
        self.drain(conn, timeout=2)
        conn.clock.advance(2)
        self.assertEqual([r.code for r in conn.replies()], [421])
        [failure] = pending.failures
        self.assertTrue(failure.check(CancelledError))
        names = conn.handler.names()
        self.assertEqual(names.count("BODY"), 1)
        self.assertNotIn("EOM", names)
        self.assertEqual(names[-2:], ["ABORT", "DISCONNECT"])

    def test_slowBodyAtTheDeadlineClosingSlowly(self) -> None:
        """
        The same over a transport that closes later, as a real one does
        (the 421 is still being written): the queued steps are dropped at
        the deadline, not run meanwhile (the cancelled BODY refuses the
        message: ABORT at once); DISCONNECT comes when the connection is
        lost.
        """
        hook, pending = pendingHook("BODY")
        clock = Clock()
        handlers: list[Recorder] = []

        def factory() -> Recorder:
            handlers.append(Recorder(BODY=hook))
            return handlers[-1]

        server = ESMTPFactory(factory, hostname=HOSTNAME, clock=clock, chunkSize=16)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
        protocol = server.buildProtocol(None)
        protocol.makeConnection(transport)
        for line in (b"EHLO c.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>"):
            protocol.dataReceived(line + b"\r\n")
        protocol.dataReceived(b"DATA\r\n")
        protocol.dataReceived(dotStuff(b"Subject: big\r\n\r\n" + b"x" * 200))
        fired: list[None] = []
        server.drain(2).addCallback(fired.append)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)
        [handler] = handlers
        self.assertEqual(handler.names().count("BODY"), 1)
        self.assertEqual(handler.names()[-1], "ABORT")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertEqual(handler.names().count("BODY"), 1)
        self.assertEqual(fired, [None])
        replies, _ = parseReplies(transport.value())
        self.assertEqual(summary(replies[-1:]), [(421, "4.3.2")])

    def test_idleTransactionAtTheDeadline(self) -> None:
        """
        A client that opened a transaction and went quiet: the 421 at the
        deadline, ABORT, DISCONNECT.
        """
        conn = self.connect()
        openTransaction(self, conn)
        fired = self.drain(conn, timeout=10)
        conn.clock.advance(9)
        self.assertFalse(conn.closed)
        conn.clock.advance(1)
        shutdownReply(self, conn.replies()[0])
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertEqual(fired, [None])

    def test_midDataAtTheDeadline(self) -> None:
        """
        A message still arriving at the deadline: 421, ABORT; what the
        client sends after it is not read, and EOM is never called.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: half\r\n\r\nhalf a mess")
        self.drain(conn, timeout=3)
        conn.clock.advance(3)
        self.assertEqual([r.code for r in conn.replies()], [421])
        conn.send(b"age\r\n.\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertNotIn("EOM", conn.handler.names())
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])

    def test_zeroTimeout(self) -> None:
        """
        A timeout of 0 closes busy sessions on the next reactor turn.
        """
        conn = self.connect()
        openTransaction(self, conn)
        fired = self.drain(conn, timeout=0)
        conn.clock.advance(0)
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertEqual(fired, [None])

    def test_defaultTimeoutFromSettings(self) -> None:
        """
        Without a timeout, the drain takes C{settings.shutdownTimeout}
        (30 s by default).
        """
        conn = self.connect()
        self.assertEqual(conn.factory.settings.shutdownTimeout, 30.0)
        openTransaction(self, conn)
        self.drain(conn)
        conn.clock.advance(29.9)
        self.assertFalse(conn.closed)
        conn.clock.advance(0.1)
        self.assertTrue(conn.closed)

    def test_clientThatDoesNotRead(self) -> None:
        """
        A connection whose transport never finishes closing (a client that
        does not read its 421) is aborted after the grace period, and the
        drain is over then.
        """
        clock = Clock()
        factory = ESMTPFactory(Recorder, hostname=HOSTNAME, clock=clock)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO c.test\r\n")
        protocol.dataReceived(b"MAIL FROM:<a@b.test>\r\n")
        fired: list[None] = []
        factory.drain(1).addCallback(fired.append)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(fired, [])
        self.assertFalse(transport.disconnected)
        clock.advance(GRACE)
        self.assertTrue(transport.disconnected)  # abortConnection
        self.assertEqual(fired, [None])
        replies, _ = parseReplies(transport.value())
        self.assertEqual(summary(replies[-1:]), [(421, "4.3.2")])


class ManyConnectionsTests(DrainTestsMixin, SynchronousTestCase):
    """
    The drain over several connections of one factory.
    """

    def second(self, conn: SMTPTestConnection) -> tuple[Any, Any]:
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "192.0.2.2", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        protocol = conn.factory.buildProtocol(None)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_firesWhenTheLastConnectionIsGone(self) -> None:
        """
        Of two connections, the idle one is closed at once; the drain is
        over only when the busy one has delivered its message and closed.
        """
        conn = self.connect()
        openTransaction(self, conn)
        other, otherTransport = self.second(conn)
        other.dataReceived(b"EHLO other.test\r\n")
        fired = self.drain(conn)
        self.assertFalse(otherTransport.connected)
        self.assertIn(b"421 4.3.2 ", otherTransport.value())
        self.assertEqual(fired, [])
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        self.assertEqual(fired, [None])

    def test_newConnectionsRefused(self) -> None:
        """
        A connection made while draining (a PROXY header read late) is
        refused with 421 4.3.2 before any hook runs.
        """
        conn = self.connect()
        openTransaction(self, conn)
        self.drain(conn)
        other, transport = self.second(conn)
        replies, _ = parseReplies(transport.value())
        self.assertEqual(summary(replies), [(421, "4.3.2")])
        self.assertFalse(transport.connected)
        self.assertIsNone(other.handler)
        self.assertEqual(self.outcomes.refused, [("shutdown", 421)])

    def test_clientGoneWhileEomRuns(self) -> None:
        """
        A client that left while its EOM runs: the drain waits for the
        hook and DISCONNECT before it is over.
        """
        hook, pending = pendingHook("EOM")
        conn = self.connect(behaviour={"EOM": hook})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        conn.close()
        self.assertEqual(conn.factory.connections, {})
        fired = self.drain(conn)
        self.assertEqual(fired, [])
        pending[0].callback(None)
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")
        self.assertEqual(fired, [None])

    def test_clientGoneWhileEomRunsPastTheDeadline(self) -> None:
        """
        Such a hook still running at the deadline is cancelled: ABORT,
        DISCONNECT, the message not accepted.
        """
        hook, pending = pendingHook("EOM")
        conn = self.connect(behaviour={"EOM": hook})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(MESSAGE))
        conn.close()
        fired = self.drain(conn, timeout=5)
        conn.clock.advance(5)
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertEqual(self.outcomes.ended, ["aborted"])
        self.assertEqual(fired, [None])

    def test_abortRunningAtTheDeadlineIsLetFinish(self) -> None:
        """
        An ABORT still running at the deadline (the client left mid-DATA,
        the handler cleans up slowly) is not cancelled: the drain waits for
        it and DISCONNECT, up to the grace period.
        """
        hook, pending = pendingHook("ABORT")
        conn = self.connect(behaviour={"ABORT": hook})
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: half\r\n")
        conn.close()
        fired = self.drain(conn, timeout=1)
        conn.clock.advance(1)
        self.assertEqual(pending.failures, [])
        self.assertEqual(fired, [])
        pending[0].callback(None)
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertEqual(fired, [None])

    def test_graceEndsTheWait(self) -> None:
        """
        An ABORT that never finishes holds the drain only until the grace
        period after the deadline is over.
        """
        hook, pending = pendingHook("ABORT")
        conn = self.connect(behaviour={"ABORT": hook}, hookTimeout=0)
        openTransaction(self, conn)
        conn.close()
        fired = self.drain(conn, timeout=1)
        conn.clock.advance(1)
        self.assertEqual(fired, [])
        conn.clock.advance(GRACE)
        self.assertEqual(fired, [None])

    def test_drainTwice(self) -> None:
        """
        A second drain() is the same drain: its Deferred fires with the
        first one's.
        """
        conn = self.connect()
        openTransaction(self, conn)
        first = self.drain(conn, timeout=5)
        second = self.drain(conn, timeout=100)
        conn.clock.advance(5)
        self.assertEqual((first, second), ([None], [None]))
        self.assertEqual(self.drain(conn), [None])

    def test_nothingToDrain(self) -> None:
        """
        A factory with no connection is drained at once.
        """
        factory = ESMTPFactory(Recorder, hostname=HOSTNAME, clock=Clock())
        fired: list[None] = []
        factory.drain().addCallback(fired.append)
        self.assertEqual(fired, [None])


class LMTPTests(DrainTestsMixin, SynchronousTestCase):
    """
    LMTP drains the same way; the end of a message gets one reply per
    recipient, then the 421.
    """

    def test_idle(self) -> None:
        conn = self.connect(LMTPTestConnection)
        conn.command("LHLO client.example")
        self.drain(conn)
        shutdownReply(self, conn.replies()[0])
        self.assertTrue(conn.closed)

    def test_messageThenShutdown(self) -> None:
        """
        Drained mid-DATA, the message is read to its end: a 250 for each
        of the two recipients, then the 421.
        """
        conn = self.connect(LMTPTestConnection)
        conn.command("LHLO client.example")
        conn.command("MAIL FROM:<alice@example.org>")
        conn.command("RCPT TO:<bob@example.org>")
        conn.command("RCPT TO:<carol@example.org>")
        self.assertEqual(conn.command("DATA").code, 354)
        data = dotStuff(MESSAGE)
        conn.send(data[:10])
        self.drain(conn)
        conn.send(data[10:] + b"MAIL FROM:<again@example.org>\r\n")
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [250, 250, 421])
        shutdownReply(self, replies[2])
        self.assertEqual(conn.handler.names().count("MAIL"), 1)

    def test_slowEomPastTheDeadline(self) -> None:
        hook, pending = pendingHook("EOM")
        conn = self.connect(LMTPTestConnection, behaviour={"EOM": hook})
        conn.command("LHLO client.example")
        conn.command("MAIL FROM:<alice@example.org>")
        conn.command("RCPT TO:<bob@example.org>")
        conn.command("RCPT TO:<carol@example.org>")
        conn.command("DATA")
        conn.send(dotStuff(MESSAGE))
        self.drain(conn, timeout=1)
        conn.clock.advance(1)
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])


class StartTLSTests(DrainTestsMixin, SynchronousTestCase):
    """
    A drain that meets STARTTLS: the 421 is never written in plaintext
    after the 220 (the client is starting its handshake then).
    """

    def test_duringTheHandshake(self) -> None:
        """
        Drained while the handshake runs: nothing until it is over, then
        the 421 (through TLS).
        """
        conn = self.connect(TLSTestConnection, tls=serverTLS())
        assert isinstance(conn, TLSTestConnection)
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("STARTTLS").code, 220)
        self.drain(conn)
        self.assertEqual(conn.replies(), [])
        self.assertFalse(conn.closed)
        conn.transport.completeHandshake()
        shutdownReply(self, conn.replies()[0])
        self.assertTrue(conn.closed)

    def test_startTLSHookPending(self) -> None:
        """
        Drained while the STARTTLS hook is pending: its 220, the handshake,
        then the 421.
        """
        pending: list[Deferred[Any]] = []

        class SlowStartTLS(Recorder):
            def STARTTLS(self) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

        conn = TLSTestConnection(SlowStartTLS, tls=serverTLS())
        conn.command("EHLO client.example")
        conn.send(b"STARTTLS\r\n")
        self.drain(conn)
        pending[0].callback(None)
        self.assertEqual([r.code for r in conn.replies()], [220])
        self.assertEqual(len(conn.transport.startTLSCalls), 1)
        plaintext = conn.transport.writtenBeforeTLS
        assert plaintext is not None
        self.assertNotIn(b"\r\n421 ", plaintext)
        conn.transport.completeHandshake()
        shutdownReply(self, conn.replies()[0])


class MaildirCancelledCommitTests(TestCase):
    """
    The Maildir handler with C{fsync=True} (its flush runs in a thread, so
    these run with the real reactor): an EOM cancelled before its flush is
    over leaves nothing in new/ or tmp/. The drain's deadline and the hook
    timeout run on the test connection's fake clock, so they always come
    before the thread's result reaches the reactor.
    """

    timeout = 30

    def setUp(self) -> None:
        self.path = tempDir(self) / "Maildir"

    def connect(self, **settings: Any) -> SMTPTestConnection:
        path = str(self.path)
        return SMTPTestConnection(
            lambda: Maildir(path, fsync=True), threadRunner=deferToThread, **settings
        )

    def transaction(self, conn: SMTPTestConnection) -> None:
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<alice@example.org>")
        conn.command("RCPT TO:<bob@example.net>")
        self.assertEqual(conn.command("DATA").code, 354)

    async def test_deliveredWhenNotCancelled(self) -> None:
        """
        The control: drained during the flush with time to spare, the
        message is delivered (250, then the 421) and is in new/.
        """
        conn = self.connect()
        self.transaction(conn)
        conn.send(dotStuff(MESSAGE))
        fired: list[None] = []
        conn.factory.drain(30).addCallback(fired.append)
        await waitUntil(lambda: conn.closed, timeout=20)
        self.assertEqual([r.code for r in conn.replies()], [250, 421])
        [delivered] = maildirFiles(self.path, "new")
        self.assertEqual(splitReceived(delivered.read_bytes())[1], MESSAGE)
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        self.assertEqual(fired, [None])

    async def test_cancelledByTheDeadline(self) -> None:
        """
        The deadline passes while the message is being flushed: 421 only,
        and once the flush is over the file is removed: nothing in new/,
        nothing in tmp/; the drain is over only then (DISCONNECT waits for
        the file to be gone).
        """
        conn = self.connect()
        self.transaction(conn)
        conn.send(dotStuff(MESSAGE))
        fired: list[None] = []
        conn.factory.drain(0).addCallback(fired.append)
        conn.clock.advance(0)
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertTrue(conn.closed)
        await waitUntil(lambda: bool(fired), timeout=20)
        self.assertEqual(maildirFiles(self.path, "new"), [])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])
        self.assertEqual(conn.replies(), [])

    async def test_cancelledByTheHookTimeout(self) -> None:
        """
        An EOM that times out (451) during its flush is not delivered
        either: a message is in new/ only if its 250 could go out.
        """
        conn = self.connect(hookTimeout=5)
        self.transaction(conn)
        conn.send(dotStuff(MESSAGE))
        conn.clock.advance(5)
        self.assertEqual(summary(conn.replies()), [(451, "4.3.0")])
        conn.command("QUIT")
        # Over once DISCONNECT is: it waits for the commit's files to go.
        fired: list[None] = []
        conn.factory.drain(30).addCallback(fired.append)
        await waitUntil(lambda: bool(fired), timeout=20)
        self.assertEqual(maildirFiles(self.path, "new"), [])
        self.assertEqual(maildirFiles(self.path, "tmp"), [])


class ServiceTests(TestCase):
    """
    L{ESMTPService.stopService} on the real reactor, over loopback TCP
    (SMTP) and a unix socket (LMTP): the listeners close at once, the idle
    LMTP client gets 421 4.3.2, the SMTP client in the middle of DATA
    finishes its message (250, then 421), and the Deferred fires only then.
    The clients are blocking sockets in threads.
    """

    timeout = 60

    async def test_stopServiceDrainsEveryFactory(self) -> None:
        port = freePort()
        socketPath = str(tempDir(self) / "lmtp.sock")
        service = ESMTPService(
            Recorder,
            [f"tcp:{port}:interface={LOOPBACK}", f"lmtp:unix:{socketPath}"],
            hostname=HOSTNAME,
            reactor=globalReactor,
        )
        service.startService()
        stopped = False

        def cleanup() -> Any:
            if not stopped:
                return service.stopService()
            return None

        self.addCleanup(cleanup)

        def smtpStart() -> socket.socket:
            sock = socket.create_connection((LOOPBACK, port), timeout=10)
            readReplies(sock, 1)
            commands = (b"EHLO c.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>")
            for line in (*commands, b"DATA"):
                sock.sendall(line + b"\r\n")
                replies, _ = readReplies(sock, 1)
                assert replies, line
            sock.sendall(dotStuff(MESSAGE)[:20])
            return sock

        def lmtpStart() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(socketPath)
            readReplies(sock, 1)
            sock.sendall(b"LHLO c.test\r\n")
            replies, _ = readReplies(sock, 1)
            assert [r.code for r in replies] == [250]
            return sock

        smtp = await deferToThread(smtpStart)
        self.addCleanup(smtp.close)
        lmtp = await deferToThread(lmtpStart)
        self.addCleanup(lmtp.close)
        fired: list[Any] = []
        service.stopService().addCallback(fired.append)
        stopped = True
        data, closed = await deferToThread(readUntilClosed, lmtp, 10)
        self.assertTrue(closed)
        self.assertTrue(data.startswith(b"421 4.3.2 "), data)

        def refused() -> bool:
            try:
                socket.create_connection((LOOPBACK, port), timeout=2).close()
            except ConnectionRefusedError:
                return True
            return False

        self.assertTrue(await deferToThread(refused))
        self.assertEqual(fired, [])

        def finish() -> tuple[list[Reply], bool]:
            smtp.sendall(dotStuff(MESSAGE)[20:])
            replies, _ = readReplies(smtp, 2)
            _, closed = readUntilClosed(smtp, 10)
            return replies, closed

        replies, closed = await deferToThread(finish)
        self.assertEqual(summary(replies), [(250, "2.0.0"), (421, "4.3.2")])
        self.assertTrue(closed)
        await waitUntil(lambda: bool(fired), timeout=10)
