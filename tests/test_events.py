"""
Tests for the server's events (L{esmtpkit.core.events}): L{ServerEvents}
calls only what observers override, every event fires exactly when and as
often as it should, whatever the log level, and the log is one observer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from esmtpkit import ESMTPHandler, Reply, ReplyError, ServerEvents, ServerObserver
from esmtpkit.core.events import EVENTS, LIMITS, LogObserver
from esmtpkit.interfaces import IServerObserver
from esmtpkit.security.auth import makePortal
from esmtpkit.testing import SMTPTestConnection, dotStuff

from .test_tls import serverTLS
from .tlshelpers import TLSTestConnection, memoryChecker, plain

MESSAGE = b"Subject: events\r\n\r\nbody\r\n"


class Everything(ServerObserver):
    """
    Records every event as C{(name, details...)}, with what can be compared
    (codes, ids, outcomes) rather than the live objects.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [event[1:] for event in self.seen if event[0] == name]

    def connectionOpened(self, session: Any) -> None:
        self.seen.append(("connectionOpened", session.id))

    def connectionRefused(self, session: Any, limit: str, reply: Reply) -> None:
        self.seen.append(("connectionRefused", limit, reply.code))

    def connectionClosed(self, session: Any) -> None:
        self.seen.append(("connectionClosed", session.id, session.messages))

    def handlerFailed(self, session: Any, failure: Any) -> None:
        self.seen.append(("handlerFailed", failure.type))

    def commandReplied(self, session: Any, verb: str, reply: Reply) -> None:
        self.seen.append(("commandReplied", verb, reply.code))

    def transactionStarted(self, session: Any, transaction: Any) -> None:
        self.seen.append(("transactionStarted", transaction.id, transaction.sender))

    def contentRefused(self, session: Any, transaction: Any, reply: Reply) -> None:
        self.seen.append(("contentRefused", reply.code))

    def transactionEnded(
        self, session: Any, transaction: Any, outcome: str, replies: Any
    ) -> None:
        self.seen.append(
            (
                "transactionEnded",
                transaction.id,
                outcome,
                tuple(r.code for r in replies),
                transaction.size,
                len(transaction.recipients),
            )
        )

    def tlsStarted(self, session: Any) -> None:
        self.seen.append(("tlsStarted",))

    def tlsEstablished(self, session: Any, tls: Any) -> None:
        self.seen.append(("tlsEstablished", tls.version))

    def tlsFailed(self, session: Any) -> None:
        self.seen.append(("tlsFailed",))

    def authSucceeded(self, session: Any, mechanism: str, identity: Any) -> None:
        self.seen.append(("authSucceeded", mechanism, identity))

    def authFailed(self, session: Any, mechanism: str, failures: int) -> None:
        self.seen.append(("authFailed", mechanism, failures))

    def limitReached(self, session: Any, limit: str, detail: str) -> None:
        self.seen.append(("limitReached", limit))

    def hookFinished(self, session: Any, hook: str, seconds: float) -> None:
        self.seen.append(("hookFinished", hook, seconds))

    def hookFailed(self, session: Any, hook: str, failure: Any) -> None:
        self.seen.append(("hookFailed", hook, failure.type))


class OnlyReplies(ServerObserver):
    def __init__(self) -> None:
        self.replies: list[int] = []

    def commandReplied(self, session: Any, verb: str, reply: Reply) -> None:
        self.replies.append(reply.code)


def connect(handler: Any = ESMTPHandler, **settings: Any) -> tuple[Any, Everything]:
    observer = Everything()
    settings.setdefault("logLevel", LogLevel.warn)
    conn = SMTPTestConnection(handler, observers=[observer], **settings)
    return conn, observer


class PublisherTests(SynchronousTestCase):
    """
    L{ServerEvents} keeps, per event, the methods of observers that
    override it.
    """

    def test_interface(self) -> None:
        """
        The base class, the log observer and a subclass provide
        L{IServerObserver}; its events are L{EVENTS}.
        """
        for observer in (ServerObserver(), LogObserver(None), Everything()):  # type: ignore[arg-type]
            self.assertTrue(verifyObject(IServerObserver, observer))
        self.assertEqual(
            sorted(EVENTS), sorted(n for n in IServerObserver.names() if n != "wants")
        )

    def test_nobodyListens(self) -> None:
        """
        Without observers every event is an empty tuple; an observer that
        overrides nothing is in none.
        """
        for events in (ServerEvents(), ServerEvents([ServerObserver()])):
            for name in EVENTS:
                self.assertEqual(getattr(events, name), (), name)

    def test_onlyOverridden(self) -> None:
        """
        An observer is called only for what it overrides, and L{wants} can
        refuse even those; remove stops it.
        """

        class Picky(Everything):
            def wants(self, event: str) -> bool:
                return event != "limitReached"

        picky, replies = Picky(), OnlyReplies()
        events = ServerEvents([picky])
        events.add(replies)
        self.assertEqual(events.limitReached, ())
        self.assertEqual(len(events.commandReplied), 2)
        self.assertEqual(len(events.connectionOpened), 1)
        events.remove(picky)
        self.assertEqual(events.connectionOpened, ())
        self.assertEqual(events.observers, (replies,))

    def test_logLevels(self) -> None:
        """
        The log observer asks for per-reply events only at debug.
        """
        info = ServerEvents([LogObserver(None, LogLevel.info)])  # type: ignore[arg-type]
        debug = ServerEvents([LogObserver(None, LogLevel.debug)])  # type: ignore[arg-type]
        self.assertEqual((info.commandReplied, info.hookFinished), ((), ()))
        self.assertEqual(len(debug.commandReplied), 1)
        self.assertEqual(len(info.transactionEnded), 1)


class ConversationEventTests(SynchronousTestCase):
    """
    A whole conversation, event by event.
    """

    def test_transactions(self) -> None:
        """
        Each reply once, with its verb; MAIL starts a transaction; RSET
        aborts it; a message accepted and one too big end with their
        outcome, size and recipients; the close comes last, once.
        """
        conn, observer = connect(maxMessageSize=100)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RSET")
        conn.command("MAIL FROM:<b@example.org>")
        conn.command("RCPT TO:<c@example.org>")
        conn.command("RCPT TO:<d@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE).code, 250)
        conn.command("MAIL FROM:<e@example.org>")
        conn.command("RCPT TO:<f@example.org>")
        self.assertEqual(conn.sendMessage(MESSAGE + b"x" * 200).code, 552)
        conn.command("QUIT")
        conn.close()
        session = conn.session.id
        verbs = [
            ("CONNECT", 220),
            ("EHLO", 250),
            ("MAIL", 250),
            ("RSET", 250),
            ("MAIL", 250),
            ("RCPT", 250),
            ("RCPT", 250),
            ("DATA", 354),
            ("EOM", 250),
            ("MAIL", 250),
            ("RCPT", 250),
            ("DATA", 354),
            ("EOM", 552),
            ("QUIT", 221),
        ]
        self.assertEqual(observer.named("commandReplied"), verbs)
        self.assertEqual(
            observer.named("transactionStarted"),
            [
                (f"{session}.1", "a@example.org"),
                (f"{session}.2", "b@example.org"),
                (f"{session}.3", "e@example.org"),
            ],
        )
        size = len(MESSAGE)
        self.assertEqual(
            observer.named("transactionEnded"),
            [
                (f"{session}.1", "aborted", (), 0, 0),
                (f"{session}.2", "accepted", (250, 250), size, 2),
                (f"{session}.3", "aborted", (), 0, 1),
            ],
        )
        self.assertEqual(observer.named("contentRefused"), [(552,)])
        self.assertEqual(observer.named("limitReached"), [("message-size",)])
        self.assertEqual(observer.seen[0], ("connectionOpened", session))
        self.assertEqual(observer.seen[-1], ("connectionClosed", session, 1))
        self.assertEqual(len(observer.named("connectionClosed")), 1)

    def test_refusedMessage(self) -> None:
        """
        A message EOM refuses ends as refused, with its reply.
        """

        class No(ESMTPHandler):
            def EOM(self) -> Any:
                return (554, "5.7.1 No")

        conn, observer = connect(No)
        conn.command("HELO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.sendMessage(MESSAGE)
        [(_, outcome, codes, _, _)] = observer.named("transactionEnded")
        self.assertEqual((outcome, codes), ("refused", (554,)))
        self.assertEqual(conn.session.messages, 0)

    def test_independentOfLogLevel(self) -> None:
        """
        An observer sees every reply with the log at critical.
        """
        replies = OnlyReplies()
        conn = SMTPTestConnection(
            ESMTPHandler, observers=[replies], logLevel=LogLevel.critical
        )
        conn.command("NOOP")
        conn.command("BOGUS")
        self.assertEqual(replies.replies, [220, 250, 500])
        self.assertEqual(conn.log.events, [])

    def test_limits(self) -> None:
        """
        Limits each report their name once.
        """
        conn, observer = connect(maxRecipients=1, hardErrorLimit=4, softErrorLimit=0)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        self.assertEqual(conn.command("RCPT TO:<c@example.org>").code, 452)
        conn.send(b"NOOP " + b"x" * 3000 + b"\r\n")
        self.assertEqual(conn.replies()[0].code, 500)
        conn.command("BOGUS")
        conn.send(b"BOGUS\r\n")
        self.assertEqual([r.code for r in conn.replies()], [500, 421])
        self.assertEqual(
            [limit for (limit,) in observer.named("limitReached")],
            ["recipients", "line-length", "errors"],
        )
        for (limit,) in observer.named("limitReached"):
            self.assertIn(limit, LIMITS)

    def test_idleAndSync(self) -> None:
        """
        The idle timeout and a client that talks out of turn.
        """
        conn, observer = connect(idleTimeout=10)
        conn.clock.advance(10)
        self.assertEqual(observer.named("limitReached"), [("idle-timeout",)])
        conn2, observer2 = connect()
        conn2.send(b"HELO a\r\nNOOP\r\n")
        self.assertEqual(observer2.named("limitReached"), [("sync",)])

    def test_connectionRefused(self) -> None:
        """
        A connection over the total limit is refused with its limit named.
        """
        factoryObserver = Everything()
        conn = SMTPTestConnection(
            ESMTPHandler, observers=[factoryObserver], maxConnections=1
        )
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "192.0.2.9", 1)
        )
        extra = conn.factory.buildProtocol(None)
        transport.protocol = extra
        extra.makeConnection(transport)
        self.assertEqual(
            factoryObserver.named("connectionRefused"), [("connections", 421)]
        )

    def test_handlerFailed(self) -> None:
        """
        A handler factory that raises: handlerFailed, a 421, then the close.
        """

        def broken() -> Any:
            raise RuntimeError("no handler")

        conn, observer = connect(broken)
        self.assertEqual(conn.greeting.code, 421)  # type: ignore[union-attr]
        self.assertEqual(observer.named("handlerFailed"), [(RuntimeError,)])
        conn.close()
        self.assertEqual(len(observer.named("connectionClosed")), 1)


class HookEventTests(SynchronousTestCase):
    """
    Hook durations and failures.
    """

    def test_durations(self) -> None:
        """
        A synchronous hook takes no time on the clock; a Deferred one as
        long as it waited.
        """
        pending: list[Deferred[Any]] = []

        class Slow(ESMTPHandler):
            def NOOP(self) -> Any:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

        conn, observer = connect(Slow)
        conn.command("HELO client.example")
        conn.send(b"NOOP\r\n")
        conn.clock.advance(3)
        pending[0].callback(None)
        self.assertEqual(conn.replies()[0].code, 250)
        self.assertEqual(
            observer.named("hookFinished"),
            [("CONNECT", 0.0), ("HELO", 0.0), ("NOOP", 3.0)],
        )

    def test_failures(self) -> None:
        """
        A hook that raises is reported once; a ReplyError is a reply, not a
        failure.
        """

        class Faulty(ESMTPHandler):
            def NOOP(self) -> Any:
                raise KeyError("bug")

            def VRFY(self, address: str) -> Any:
                raise ReplyError(550, "5.1.1 No")

        conn, observer = connect(Faulty)
        self.assertEqual(conn.command("NOOP").code, 451)
        self.assertEqual(conn.command("VRFY x").code, 550)
        self.assertEqual(observer.named("hookFailed"), [("NOOP", KeyError)])

    def test_timeout(self) -> None:
        """
        A hook that times out is a limit, not a failure.
        """

        class Never(ESMTPHandler):
            def NOOP(self) -> Any:
                return Deferred()

        conn, observer = connect(Never, hookTimeout=5)
        conn.send(b"NOOP\r\n")
        conn.clock.advance(5)
        self.assertEqual(observer.named("limitReached"), [("hook-timeout",)])
        self.assertEqual(observer.named("hookFailed"), [])


class SecurityEventTests(SynchronousTestCase):
    """
    TLS and AUTH outcomes.
    """

    def test_tlsAndAuth(self) -> None:
        """
        STARTTLS starts and completes; a bad password fails, a good one
        succeeds, with the mechanism and identity.
        """
        observer = Everything()
        conn = TLSTestConnection(
            ESMTPHandler,
            tls=serverTLS(),
            portal=makePortal([memoryChecker(alice="pw")]),
            observers=[observer],
            logLevel=LogLevel.warn,
        )
        conn.command("EHLO client.example")
        self.assertEqual(conn.starttls().code, 220)
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "bad")).code, 535)
        conn.clock.advance(10)
        self.assertEqual(conn.command("AUTH PLAIN " + plain("alice", "pw")).code, 235)
        self.assertEqual(
            [e for e in observer.seen if e[0].startswith(("tls", "auth"))],
            [
                ("tlsStarted",),
                ("tlsEstablished", "TLSv1.3"),
                ("authFailed", "PLAIN", 1),
                ("authSucceeded", "PLAIN", "alice"),
            ],
        )

    def test_handshakeNeverCompletes(self) -> None:
        """
        A connection lost during its handshake reports the failure.
        """
        observer = Everything()
        conn = TLSTestConnection(
            ESMTPHandler, tls=serverTLS(), observers=[observer], logLevel=LogLevel.warn
        )
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("STARTTLS").code, 220)
        conn.close()
        self.assertEqual(
            [e for e in observer.seen if e[0].startswith("tls")],
            [("tlsStarted",), ("tlsFailed",)],
        )


class LogObserverTests(SynchronousTestCase):
    """
    The log, as an observer, writes the lines it always wrote.
    """

    def test_messageLine(self) -> None:
        """
        The accepted-message line, and the connection line.
        """
        conn = SMTPTestConnection(ESMTPHandler)
        conn.command("HELO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.send(b"DATA\r\n")
        conn.send(dotStuff(MESSAGE))
        lines = [formatEvent(e) for e in conn.log.events]
        session = conn.session.id
        self.assertIn(
            f"session {session} message {session}.1 accepted: client=192.0.2.1 "
            f"helo=<client.example> from=<a@example.org> to=<b@example.org> "
            f"size={len(MESSAGE)} reply=250",
            lines,
        )
        self.assertTrue(
            any(f"session {session} connected from" in line for line in lines)
        )
