"""
Test a handler without sockets: L{SMTPTestConnection} runs a real
L{ESMTPProtocol} over an in-memory transport and a fake clock.

    conn = SMTPTestConnection(MyHandler)
    assert conn.greeting.code == 220
    assert conn.command("EHLO client.example").code == 250
    assert conn.command("MAIL FROM:<a@example.org>").code == 250
    assert conn.command("RCPT TO:<b@example.org>").code == 250
    assert conn.sendMessage(b"Subject: hi\\r\\n\\r\\nHello\\r\\n").code == 250

While the connection is driven (L{SMTPTestConnection.driving}), what a
handler defers to a thread (L{esmtpkit.threads.deferToThread}: Maildir's
fsync) runs inline, and L{SMTPTestConnection.command} and C{sendMessage}
advance the fake clock while the handler waits on its timers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer, implementer_only

from .io.writer import SocketLike
from .reply import Reply, replyOfLines
from .server.factory import ESMTPFactory, HandlerFactory, LMTPFactory
from .settings import Settings
from .smtp.connection import SMTPConnection
from .testclock import DrivenClock, ServerClock
from .threads import ThreadRunner, runInline, runningWith

__all__ = [
    "SMTPTestConnection",
    "LMTPTestConnection",
    "parseReplies",
    "LogCollector",
    "dotStuff",
]


def parseReplies(data: bytes) -> tuple[list[Reply], bytes]:
    """
    Parse complete replies out of server output.

    @return: the replies, and the bytes of an incomplete reply at the end.
    @raise ValueError: the output is not well-formed SMTP replies.
    """
    replies: list[Reply] = []
    lines: list[str] = []
    pos = replyStart = code = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        line = data[pos:end].decode("utf-8", "surrogateescape")
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            raise ValueError(f"malformed reply line {line!r}")
        if lines and int(line[:3]) != code:
            raise ValueError(f"reply line {line!r} does not continue code {code}")
        code = int(line[:3])
        lines.append(line[4:])
        pos = end + 2
        if line[3:4] != "-":
            replies.append(replyOfLines(code, lines))
            lines = []
            replyStart = pos
    return replies, data[replyStart:]


@implementer(ILogObserver)
class LogCollector:
    """
    A log observer that keeps the events it sees (in C{events}).
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)


class _DirectSocket:
    """
    The socket of a L{_DirectTCPTransport}: passes C{send} on to the test's
    socket and keeps what it took.
    """

    def __init__(self, sock: SocketLike) -> None:
        self._sock = sock
        self.accepted = b""

    def send(self, data: bytes, /) -> int:
        taken = self._sock.send(data)
        if not 0 <= taken <= len(data):
            raise AssertionError(f"send took {taken} of {len(data)} bytes")
        self.accepted += data[:taken]
        return taken


@implementer_only(ITCPTransport, IConsumer, IPushProducer)
class _DirectTCPTransport(  # type: ignore[misc]
    StringTransportWithDisconnection, tcp.Connection
):
    """
    An in-memory transport that passes for a plain TCP connection (see
    L{esmtpkit.io.writer.directSocket}): its handle is a test's socket,
    and its C{reactor} the test's clock. Everything else is the
    L{StringTransportWithDisconnection}'s; nothing of C{tcp.Connection}
    but its type is used (its C{__init__} is not called).
    """

    def __init__(self, sock: _DirectSocket, reactor: IReactorTime, **kw: Any) -> None:
        StringTransportWithDisconnection.__init__(self, **kw)
        self.socket: Any = sock
        self.reactor: Any = reactor  # what the writer's batch waits on
        self.noDelay = False

    def getHandle(self) -> Any:
        return self.socket

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self.noDelay


class SMTPTestConnection:
    """
    One SMTP connection to a handler, in memory.

    With C{directSocket}, the connection's replies take the path they take
    on a plain TCP connection: they wait for the end of the reactor turn
    (C{clock.advance(0)}), are offered to C{directSocket.send}, and what it
    does not take, and everything after it, goes to the transport.

    @ivar clock: the L{Clock} behind timeouts; C{advance} it to test them.
    @ivar transport: the in-memory transport (C{value()} is all output, or,
        with C{directSocket}, what the socket did not take: see L{output}).
    @ivar protocol: the L{ESMTPProtocol <esmtpkit.ESMTPProtocol>}.
    @ivar factory: the L{ESMTPFactory}.
    @ivar log: a L{LogCollector} with the connection's log events.
    @ivar threadRunner: the L{ThreadRunner <esmtpkit.threads.ThreadRunner>}
        of handlers' thread work while the connection is driven.
    @ivar greeting: the greeting reply, or L{None} if the greeting is not
        out yet (an asynchronous CONNECT hook).
    """

    transportFactory: Any = StringTransportWithDisconnection
    """
    The in-memory transport class (a subclass may give one that provides
    C{ITLSTransport}, to test STARTTLS).
    """

    factoryClass: type[ESMTPFactory] = ESMTPFactory
    """
    The factory of the server side (L{LMTPTestConnection} gives LMTP's).
    """

    autoAdvanceLimit: float = 3600.0
    """
    At most this many fake seconds, and at most L{autoAdvanceSteps} timer
    firings, do L{command} and L{sendMessage} advance the clock while the
    handler waits on its timers (C{0}: they never advance it).
    """

    autoAdvanceSteps: int = 1000
    """
    At most this many due calls does one L{command} or L{sendMessage} run
    while it advances the clock (see L{autoAdvanceLimit}).
    """

    _hello = "EHLO"

    def __init__(
        self,
        handlerFactory: HandlerFactory,
        settings: Settings | None = None,
        *,
        peer: IAddress | None = None,
        clock: Clock | None = None,
        directSocket: SocketLike | None = None,
        threadRunner: ThreadRunner = runInline,
        **overrides: Any,
    ) -> None:
        """
        @param directSocket: a socket-like object, whose C{send(data)}
            returns how many bytes it took (maybe fewer than all) or raises
            L{OSError} (C{BlockingIOError} for a full buffer): replies are
            then written to it directly, as to the socket of a plain TCP
            connection (the transport is not L{transportFactory}'s then).
        @param threadRunner: what runs the work handlers defer to threads
            while the connection is driven (see L{driving}): inline by
            default; give L{twisted.internet.threads.deferToThread} to test
            with real threads and a running reactor.
        """
        self.threadRunner = threadRunner
        if clock is None:
            clock = DrivenClock()
            clock.threadRunner = threadRunner
        self.clock = clock
        self._serverClock = ServerClock(self.clock)
        self.log = LogCollector()
        overrides.setdefault("hostname", "mx.example.test")
        self.factory = self.factoryClass(
            handlerFactory,
            settings,
            clock=self._serverClock,
            logObserver=self.log,
            **overrides,
        )
        peer = peer or IPv4Address("TCP", "192.0.2.1", 49152)
        addresses = {
            "hostAddress": IPv4Address("TCP", "127.0.0.1", 25),
            "peerAddress": peer,
        }
        self._socket: _DirectSocket | None = None
        if directSocket is None:
            self.transport = self.transportFactory(**addresses)
        else:
            self._socket = _DirectSocket(directSocket)
            self.transport = _DirectTCPTransport(self._socket, self.clock, **addresses)
        self.protocol: SMTPConnection = self.factory.buildProtocol(peer)
        self.transport.protocol = self.protocol
        self._read = 0
        with self.driving():
            self.protocol.makeConnection(self.transport)
        replies = self.replies()
        self.greeting = replies[0] if replies else None

    @contextmanager
    def driving(self) -> Iterator[None]:
        """
        Within the block, what a handler defers to a thread with
        L{esmtpkit.threads.deferToThread} runs with L{threadRunner}: by
        default inline, before the call that deferred it returns. L{send},
        L{command}, L{sendMessage}, L{replies}, L{advance}, L{close} and the
        C{advance} of the clock the connection made itself drive the
        connection this way; use this block where the test itself sets the
        server going otherwise, such as firing a Deferred a hook waits on.
        """
        with runningWith(self.threadRunner):
            yield

    def advance(self, seconds: float) -> None:
        """
        Move the clock on by C{seconds}, running what fell due, with
        threads run inline (see L{driving}).
        """
        with self.driving():
            self.clock.advance(seconds)  # type: ignore[attr-defined]

    @property
    def handler(self) -> Any:
        """
        The connection's handler.
        """
        return self.protocol.handler

    @property
    def session(self) -> Any:
        """
        The connection's L{Session <esmtpkit.session.Session>}.
        """
        return self.protocol.session

    @property
    def closed(self) -> bool:
        """
        Whether the server has closed (or is closing) the connection.
        """
        return bool(self.transport.disconnecting) or not self.transport.connected

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} to the server as one read.
        """
        with self.driving():
            self.protocol.dataReceived(data)

    @property
    def output(self) -> bytes:
        """
        Every byte the client has received: the transport's C{value()}, or,
        with C{directSocket}, what the socket took, then what the transport
        got (which the socket is never offered anything after).
        """
        sent: bytes = self.transport.value()
        if self._socket is None:
            return sent
        return self._socket.accepted + sent

    def replies(self) -> list[Reply]:
        """
        The complete replies written since the last call (with
        C{directSocket}, once the reactor turn is over: C{clock.advance(0)}
        comes first).
        """
        if self._socket is not None:
            self.advance(0)
        output = self.output
        replies, rest = parseReplies(output[self._read :])
        self._read = len(output) - len(rest)
        return replies

    def _awaitReplies(self, count: int) -> list[Reply]:
        """
        The replies, once C{count} have come, or as many as came while the
        clock was advanced, one due call at a time, through the handler's
        timers: as long as the handler has one pending (the server's own
        timeouts alone are never waited for), within L{autoAdvanceLimit}
        seconds and L{autoAdvanceSteps} steps.
        """
        replies = self.replies()
        limit = self.clock.seconds() + self.autoAdvanceLimit
        isServer = self._serverClock.isServerCall
        for _ in range(self.autoAdvanceSteps):
            if len(replies) >= count or self.closed:
                break
            pending = [c for c in self.clock.getDelayedCalls() if c.active()]
            if all(isServer(c) for c in pending):
                break
            due = min(c.getTime() for c in pending)
            if due > limit:
                break
            self.advance(max(0.0, due - self.clock.seconds()))
            replies += self.replies()
        return replies

    def command(self, line: str | bytes) -> Reply:
        """
        Send one command line (CRLF is added) and return its reply. While
        the reply waits on the handler's timers on L{clock}, the clock is
        advanced (see L{autoAdvanceLimit}).

        @raise AssertionError: there was not exactly one reply.
        """
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.send(data + b"\r\n")
        replies = self._awaitReplies(1)
        if len(replies) != 1:
            raise AssertionError(f"expected one reply to {line!r}, got {replies!r}")
        return replies[0]

    def sendMessage(self, message: bytes) -> Reply:
        """
        Send DATA, then C{message} dot-stuffed and terminated, and return
        the reply to the end of data (after a 354), advancing the clock as
        L{command} does.
        """
        reply = self.command("DATA")
        if reply.code != 354:
            return reply
        self.send(dotStuff(message))
        replies = self._awaitReplies(1)
        if len(replies) != 1:
            raise AssertionError(f"expected one reply to the message, got {replies!r}")
        return replies[0]

    def sendMail(
        self, sender: str, recipients: str | Sequence[str], message: bytes
    ) -> Reply:
        """
        One whole transaction, as C{smtplib}'s C{sendmail} makes it: C{EHLO}
        first if the client has not greeted yet, C{MAIL FROM}, a C{RCPT TO}
        for each recipient, then C{message} (L{sendMessage}).

        @return: the reply to the end of the data; or the reply that ended
            the transaction before it: a refused greeting or C{MAIL}, or the
            last refusal when no recipient was accepted (the transaction is
            then reset with C{RSET}).
        """
        return self._sendMail(sender, recipients, message)  # type: ignore[no-any-return]

    def _sendMail(
        self, sender: str, recipients: str | Sequence[str], message: bytes
    ) -> Any:
        if self.session.heloName is None:
            hello = self.command(f"{self._hello} client.example")
            if hello.code != 250:
                return hello
        reply = self.command(f"MAIL FROM:<{sender}>")
        if reply.code != 250:
            return reply
        if isinstance(recipients, str):
            recipients = [recipients]
        accepted = False
        for recipient in recipients:
            reply = self.command(f"RCPT TO:<{recipient}>")
            accepted = accepted or reply.code // 100 == 2
        if not accepted:
            self.command("RSET")
            return reply
        return self.sendMessage(message)

    def close(self) -> None:
        """
        Drop the connection from the client side.
        """
        if self.transport.connected:
            with self.driving():
                self.transport.loseConnection()


class LMTPTestConnection(SMTPTestConnection):
    """
    One LMTP connection to a handler, in memory: greet with C{LHLO}, and
    L{sendMessage} gives one reply per accepted recipient.

        conn = LMTPTestConnection(MyHandler)
        conn.command("LHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.org>")
        conn.command("RCPT TO:<c@example.org>")
        replies = conn.sendMessage(b"Subject: hi\\r\\n\\r\\nHello\\r\\n")
        assert [r.code for r in replies] == [250, 550]
    """

    factoryClass = LMTPFactory
    _hello = "LHLO"

    def sendMail(  # type: ignore[override]
        self, sender: str, recipients: str | Sequence[str], message: bytes
    ) -> list[Reply]:
        """
        One whole transaction, as L{SMTPTestConnection.sendMail} (C{LHLO}
        first if needed), with one reply per accepted recipient.

        @return: the replies to the end of the data, or a list of the one
            reply that ended the transaction before it.
        """
        result = self._sendMail(sender, recipients, message)
        return result if isinstance(result, list) else [result]

    def sendMessage(self, message: bytes) -> list[Reply]:  # type: ignore[override]
        """
        Send DATA, then C{message} dot-stuffed and terminated; return the
        replies to the end of data, one per accepted recipient (or the one
        reply refusing DATA).
        """
        transaction = self.session.transaction
        expected = len(transaction.recipients) if transaction is not None else 1
        reply = self.command("DATA")
        if reply.code != 354:
            return [reply]
        self.send(dotStuff(message))
        return self._awaitReplies(max(1, expected))


def dotStuff(message: bytes) -> bytes:
    """
    C{message} as a client sends it after DATA: dot-stuffed, ending in CRLF,
    then the terminating C{.} line.
    """
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
