"""
L{SMTPClient}: a small SMTP/LMTP client protocol that sends one command at a
time and gives each reply as a L{Reply}, for the L{Relay
<esmtpkit.handlers.Relay>} handler.

Twisted's C{twisted.mail.smtp} client (C{ESMTPSender}, C{sendmail}) takes a
whole message with its envelope and runs the transaction by itself. A proxy
cannot: it must send MAIL when its own client sends MAIL, each RCPT when
that RCPT comes (so that a refusal reaches the client at RCPT time), and the
body as it streams in. This client does only that: L{SMTPClient.command}
writes one line and returns a Deferred of the reply; L{SMTPClient.writeBody}
writes message bytes with flow control (the Deferred fires once the
transport has taken them); L{SMTPClient.replies} waits for several replies
(LMTP's one per recipient).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ...reply import Reply, replyOfLines

__all__ = [
    "SMTPClient",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamLost",
    "UpstreamProtocolError",
    "DotStuffer",
    "parseExtensions",
]

#: The most lines one reply may have (an EHLO reply has a dozen).
MAX_REPLY_LINES = 100


class UpstreamError(Exception):
    """
    The upstream server could not be talked to.
    """


class UpstreamTimeout(UpstreamError):
    """
    The upstream server did not answer (or take data) in time.
    """


class UpstreamLost(UpstreamError):
    """
    The connection to the upstream server was lost.
    """


class UpstreamProtocolError(UpstreamError):
    """
    The upstream server sent something that is not an SMTP reply.
    """


def parseExtensions(reply: Reply) -> dict[str, str]:
    """
    The service extensions of an EHLO (or LHLO) reply: upper-cased keyword
    to its parameters (C{""} for none). The first line is the greeting.
    """
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


@implementer(IPushProducer)
class SMTPClient(LineReceiver):
    """
    One connection to an upstream SMTP or LMTP server.

    @ivar greeting: fires with the server's greeting (a L{Reply}), or
        fails with L{UpstreamError}.
    @ivar connected: whether the connection is open.
    @ivar lostReason: why the connection was lost, once it was.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 4096
    transport: Any  # a TCP or unix transport: a consumer, and can start TLS

    def __init__(self, clock: IReactorTime, greetingTimeout: float) -> None:
        self.clock = clock
        self.greetingTimeout = greetingTimeout
        self.greeting: Deferred[Reply] = Deferred()
        self.connected = False
        self.lostReason: Failure | None = None
        self._waiting: deque[tuple[Deferred[Reply], IDelayedCall | None]] = deque()
        self._lines: list[str] = []
        self._code = 0
        self._paused = False
        self._drained: Deferred[None] | None = None
        self._drainTimer: IDelayedCall | None = None

    # -- the connection ---------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.registerProducer(self, True)
        self._expect(self.greeting, self.greetingTimeout)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self.lostReason = reason
        self._fail(UpstreamLost(f"connection lost: {reason.getErrorMessage()}"))

    def close(self) -> None:
        """
        Close the connection once what was written has been sent.
        """
        if self.connected and self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """
        Drop the connection now (after a timeout or a cancelled command:
        what the server would answer next is unknown).
        """
        if self.connected and self.transport is not None:
            self.connected = False  # at once: connectionLost comes later
            self.transport.abortConnection()

    def _fail(self, error: UpstreamError) -> None:
        waiting, self._waiting = self._waiting, deque()
        for deferred, timer in waiting:
            if timer is not None and timer.active():
                timer.cancel()
            if not deferred.called:  # a cancelled one has failed already
                deferred.errback(error)
        self._releaseWriter(error)

    # -- commands and replies -----------------------------------------------

    def command(self, line: str | bytes, timeout: float) -> Deferred[Reply]:
        """
        Send command C{line} (without CRLF) and return a Deferred of its
        reply. It fails with L{UpstreamTimeout} after C{timeout} seconds
        (the connection is then dropped), with L{UpstreamLost} if the
        connection goes, and cancelling it drops the connection too.
        """
        data = (
            line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
        )
        if not self.connected:
            return _failed(UpstreamLost("not connected"))
        deferred: Deferred[Reply] = Deferred(lambda d: self.abort())
        self._expect(deferred, timeout)
        self.transport.write(data + b"\r\n")
        return deferred

    def replies(self, count: int, timeout: float) -> list[Deferred[Reply]]:
        """
        Deferreds of the next C{count} replies (after the end of a message:
        one, or under LMTP one per accepted recipient), each given
        C{timeout} seconds from now.
        """
        if not self.connected:
            return [_failed(UpstreamLost("not connected")) for _ in range(count)]
        out = []
        for _ in range(count):
            deferred: Deferred[Reply] = Deferred(lambda d: self.abort())
            self._expect(deferred, timeout)
            out.append(deferred)
        return out

    def _expect(self, deferred: Deferred[Reply], timeout: float) -> None:
        timer = None
        if timeout:
            timer = self.clock.callLater(timeout, self._timedOut, timeout)
        self._waiting.append((deferred, timer))

    def _timedOut(self, timeout: float) -> None:
        self._fail(UpstreamTimeout(f"no reply in {timeout:g} s"))
        self.abort()

    def lineReceived(self, line: bytes) -> None:
        if not self.connected:
            return  # dropped: what else was read with this line is moot
        text = line.decode("utf-8", "surrogateescape")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self._protocolError(f"not an SMTP reply: {text[:80]!r}")
            return
        code = int(text[:3])
        if self._lines and code != self._code:
            self._protocolError(f"reply line {text[:80]!r} changes the code")
            return
        self._code = code
        self._lines.append(text[4:])
        if text[3:4] == "-":
            if len(self._lines) > MAX_REPLY_LINES:
                self._protocolError("reply too long")
            return
        lines, self._lines = self._lines, []
        try:
            reply = replyOfLines(code, lines)
        except ValueError as e:
            self._protocolError(str(e))
            return
        if not self._waiting:
            # Unasked (a 421 before closing, say): nothing waits for it.
            return
        deferred, timer = self._waiting.popleft()
        if timer is not None and timer.active():
            timer.cancel()
        if not deferred.called:
            deferred.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocolError("reply line too long")

    def _protocolError(self, problem: str) -> None:
        self._fail(UpstreamProtocolError(problem))
        self.abort()

    # -- the message ------------------------------------------------------

    def writeBody(self, data: bytes, timeout: float) -> Deferred[None] | None:
        """
        Write message bytes (already framed: dot-stuffed for DATA).

        @return: L{None} while the transport takes more; else (it asked this
            producer to pause: its buffer is full) a Deferred that fires
            when it has drained enough again; it fails with
            L{UpstreamTimeout} if that takes more than C{timeout} seconds,
            and with L{UpstreamLost} if the connection goes.
        """
        if not self.connected:
            return _failed(UpstreamLost("not connected"))
        if data:
            self.transport.write(data)
        if not self._paused:
            return None
        drained = self._drained = Deferred(lambda d: self.abort())
        if timeout:
            self._drainTimer = self.clock.callLater(
                timeout, self._drainTimedOut, timeout
            )
        return drained

    def _drainTimedOut(self, timeout: float) -> None:
        self._drainTimer = None
        self._releaseWriter(UpstreamTimeout(f"data not taken in {timeout:g} s"))
        self.abort()

    def _releaseWriter(self, error: UpstreamError | None) -> None:
        drained, self._drained = self._drained, None
        timer, self._drainTimer = self._drainTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        if drained is not None and not drained.called:
            if error is None:
                drained.callback(None)
            else:
                drained.errback(error)

    # IPushProducer: the transport tells the client its buffer is full.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._releaseWriter(None)

    def stopProducing(self) -> None:
        self._paused = True


class DotStuffer:
    """
    Frames a message's bytes for DATA (RFC 5321 section 4.5.2): a C{.} at
    the start of a line is doubled, whatever chunks the bytes come in, and
    L{end} closes the message with C{CRLF.CRLF}, adding a line ending
    first if the message does not end with one.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # The last two bytes written; b"\r\n" at the start (a line starts).
        self._last = b"\r\n"

    def stuff(self, data: bytes) -> bytes:
        """
        C{data} dot-stuffed.
        """
        if not data:
            return data
        stuffed = data.replace(b"\n.", b"\n..")
        if data[:1] == b"." and self._last[-1:] == b"\n":
            stuffed = b"." + stuffed
        self._last = (self._last + data)[-2:]
        return stuffed

    def end(self) -> bytes:
        """
        The bytes that end the message.
        """
        return b".\r\n" if self._last == b"\r\n" else b"\r\n.\r\n"


def _failed(error: Exception) -> Deferred[Any]:
    deferred: Deferred[Any] = Deferred()
    deferred.errback(error)
    return deferred
