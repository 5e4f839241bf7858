"""
L{SMTPConnection}: one connection of an SMTP-like wire (SMTP, LMTP) around a
L{Conversation <esmtpkit.core.conversation.Conversation>}: its life cycle,
the input framing and flow control, and the protections that do not depend
on any command. Its state and its replies are L{ReplyingConnection}'s
(L{esmtpkit.smtp.replies}).

Input goes to whichever reader is set (message content after DATA or BDAT,
a SASL exchange, the rest of an over-long line) and otherwise to
C{_commandLine}, which L{ESMTPProtocol <esmtpkit.ESMTPProtocol>} gives
SMTP's commands. Replies go out through the connection's reply writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..io.writer import ReplyWriter
from ..reply import Reply
from .deadline import RequestDeadline
from .lines import PushbackLineReceiver
from .reader import LineSkipper, Reader
from .replies import COMMAND, GREETING, REFUSED, ReplyingConnection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ..core.results import MessageResult
    from ..server.context import ServerContext

__all__ = ["SMTPConnection", "HELD_INPUT", "GREETING", "COMMAND", "REFUSED"]

# Why input is held (bits of SMTPConnection._paused).
_HELD_HOOK = 1  # a hook is pending
_HELD_OUTPUT = 2  # the client is not reading its replies
_HELD_GREETING = 4  # waiting for greetingDelay

HELD_INPUT = 65536
"""
Unprocessed input held while paused, in bytes, beyond which the transport
stops reading.
"""

_LINE_TOO_LONG = Reply(500, "Line too long", enhanced="5.5.6")


class SMTPConnection(ReplyingConnection):
    """
    One server connection of an SMTP-like wire, driving one conversation.

    @ivar idleSince: when the client last sent something while the idle
        timer watches the connection, else L{None} (see L{IdleTimer
        <esmtpkit.server.idle.IdleTimer>}).
    """

    __slots__ = (
        "_deadline",
        "_greetingCall",
        "_pausedAt",
        "_paused",
        "_transportPaused",
        "idleSince",
    )

    def __init__(self, server: ServerContext) -> None:
        """
        @param server: what the connections of one server share.
        """
        super().__init__(server)
        self._deadline: RequestDeadline | None = None  # made for the first message
        self._greetingCall: IDelayedCall | None = None
        self._pausedAt = 0.0
        self._paused = 0  # why input is held: a mask of the _HELD_* reasons
        self._transportPaused = False
        self.idleSince: float | None = None  # see IdleTimer

    # -- connection life cycle --------------------------------------------

    def connectionMade(self) -> None:
        server, session = self.server, self.session
        transport = self.transport
        session.peer = transport.getPeer()
        session.host = server.limits.sharedAddress(transport.getHost())
        self.writer = ReplyWriter(transport, server.output)
        events = server.events
        for notify in events.connectionOpened:
            notify(session)
        refusal = server.limits.opened(self)
        if refusal is not None:
            limit, reply = refusal
            for notify in events.connectionRefused:
                notify(session, limit, reply)
            self.writeReply(reply)
            return
        if not self.conversation.start(server.handlerFactory, self):
            host = session.hostname
            self.writeReply(
                Reply(421, f"{host} Service not available", enhanced="4.3.0")
            )
            return
        if ITCPTransport.providedBy(transport):
            # Replies are written whole; Nagle's algorithm would only hold
            # one back until the client's delayed ACK.
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        server.idleTimer.start(self)
        if self.settings.greetingDelay:
            # Hold any input until the greeting is out (dataReceived still
            # sees it arrive, to catch early talkers).
            self._pauseInput(_HELD_GREETING, stopTransport=False)
            self._greetingCall = server.clock.callLater(
                self.settings.greetingDelay, self._greet
            )
        else:
            self._greet()

    def _greet(self) -> None:
        self._greetingCall = None
        self.conversation.greet(self._greeted)
        self.conversation.hooks.drive()
        if self._paused & _HELD_GREETING:
            self._resumeInput(_HELD_GREETING)

    def _greeted(self, reply: Reply) -> None:
        # RFC 5321 allows only 220, 554 (no service) and 421 (closing) here.
        # The greeting goes out before the state changes, so that a refusal
        # does not count as a client error.
        kind = reply.code // 100
        if kind == 2:
            if reply.code != 220:
                reply = Reply(220, *reply.lines)
            self.writeReply(self.withHostname(reply), enhanced=False)
            self._state = COMMAND
            return
        code = 421 if kind == 4 else 554
        self.writeReply(Reply(code, *reply.lines, enhanced=reply.enhanced))
        self._state = REFUSED

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.idleSince = None
        if self._deadline is not None:
            self._deadline.cancel()
        if self._greetingCall is not None and self._greetingCall.active():
            self._greetingCall.cancel()
        self._closing = True
        if self.writer is not None:
            self.writer.discard()  # no one left to write to
        if self._secure is not None:
            self._secure.connectionLost()
        elif self.session.tls is None and ISSLTransport.providedBy(self.transport):
            # An implicit TLS listener whose handshake never completed.
            for notify in self.server.events.tlsFailed:
                notify(self.session)
        limits = self.server.limits
        if limits.closed(self):
            self.server.idleTimer.stop()
        # The hook in flight, if any, finishes first (it may be the EOM that
        # ends the transaction, making ABORT moot); the limits keep the
        # connection among those ending until DISCONNECT is over.
        self.conversation.close(lambda: limits.ended(self))

    # -- flow control -----------------------------------------------------
    # Input stops for two reasons: a hook is pending (so replies stay in
    # order and a slow handler slows the client down), or the client is not
    # reading our replies (the transport, whose producer we are, says its
    # write buffer is full). Reading resumes when neither holds.

    def hookPending(self) -> None:
        """
        L{HookFlow}: a hook is pending; hold input.
        """
        self.idleSince = None
        self._pausedAt = self.server.clock.seconds()
        # Before the greeting, keep reading: a client that talks first is
        # caught by dataReceived.
        self._pauseInput(_HELD_HOOK, stopTransport=self._state != GREETING)

    def hooksDone(self) -> None:
        """
        L{HookFlow}: no hook is pending any more; input may resume.
        """
        if self._draining:
            self._closeIfIdle()  # before any held input is served
        if not self._closing:
            if self._deadline is not None:
                self._deadline.hold(self.server.clock.seconds() - self._pausedAt)
            self.server.idleTimer.start(self)
        self._resumeInput(_HELD_HOOK)

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: process nothing more until the
        client has taken its replies. The transport itself keeps reading
        (a TLS layer waiting for its handshake pauses us this way too) until
        more than L{HELD_INPUT} bytes wait unprocessed.
        """
        self._pauseInput(_HELD_OUTPUT, stopTransport=False)

    def resumeProducing(self) -> None:
        self._resumeInput(_HELD_OUTPUT)

    def stopProducing(self) -> None:
        self._closing = True

    def _pauseInput(self, reason: int, stopTransport: bool = True) -> None:
        self._paused |= reason
        self.paused = True
        if stopTransport and not self._transportPaused and not self._closing:
            self._transportPaused = True
            self.transport.pauseProducing()

    def _resumeInput(self, reason: int) -> None:
        self._paused &= ~reason
        if self._paused:
            return
        self.paused = False
        if self._closing:
            return
        # Work through what is held first; read more only if that did not
        # pause input again and not much is left waiting.
        self.dataReceived(b"")
        if (
            self._transportPaused
            and not self.paused
            and not self._closing
            and len(self._buffer) <= HELD_INPUT
        ):
            self._transportPaused = False
            self.transport.resumeProducing()

    # -- input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.paused and data and not self._transportPaused:
            if len(self._buffer) + len(data) > HELD_INPUT:
                self._transportPaused = True
                self.transport.pauseProducing()
        if data:
            if self._state == GREETING and self.settings.enforceSync:
                self.violation("client talked before the greeting")
                return
            if self.idleSince is not None:
                self.idleSince = self.server.clock.seconds()
        # Replies made while this input is handled go out together.
        self.writer.handle(PushbackLineReceiver.dataReceived, self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        reader = self._reader
        if reader is None or not reader.lineTooLong():
            self.verb = "UNKNOWN"  # the command is not known: its line is cut
            self.limitReached("line-length", "sent a line that is too long")
            self._reader = LineSkipper(self, reader, _LINE_TOO_LONG)
            self.setRawMode()
        self.pushBack(line)
        self.conversation.hooks.drive()

    def lineReceived(self, line: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self._draining and self.sessionIdle():
                self._sayShuttingDown()  # a new command is not served
                return
            self._commandLine(line)
        else:
            reader.lineReceived(line)
        hooks = self.conversation.hooks
        if hooks.steps or hooks.holding:
            hooks.drive()

    def rawDataReceived(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        reader.rawDataReceived(data)
        hooks = self.conversation.hooks
        if hooks.steps or hooks.holding:
            hooks.drive()

    def readWith(self, reader: Reader, raw: bool = True) -> None:
        """
        Give the input to C{reader} (raw, or in lines) until L{readerDone}.
        """
        self._reader = reader
        if raw:
            self.setRawMode()

    def readerDone(self) -> None:
        """
        Input is commands again.
        """
        self._reader = None
        self.MAX_LENGTH = self.settings.maxLineLength

    def requestDeadline(self) -> RequestDeadline:
        """
        The deadline for the content of requests (made on first use).
        """
        deadline = self._deadline
        if deadline is None:
            settings = self.settings
            deadline = self._deadline = RequestDeadline(
                self.server.clock,
                settings.idleTimeout if settings.minDataRate else 0.0,
                settings.minDataRate,
                self.conversation.hooks,
                self._deadlinePassed,
            )
        return deadline

    def _deadlinePassed(self) -> None:
        self.limitReached("data-rate", "sent its message too slowly")
        host = self.session.hostname
        self.writeReply(
            Reply(
                421,
                f"{host} Error: timeout exceeded (message too slow)",
                enhanced="4.4.2",
            )
        )

    def _commandLine(self, line: bytes) -> None:
        """
        A command line: this class knows no command, so every line goes to
        the UNKNOWN hook (L{ESMTPProtocol <esmtpkit.ESMTPProtocol>} knows
        SMTP's).
        """
        text = line.decode("utf-8", "surrogateescape")
        self.conversation.command("UNKNOWN", (text,), self.writeReply)

    # -- the end of a message ---------------------------------------------

    def messageDone(self, result: MessageResult) -> None:
        """
        The end of a message was answered: SMTP sends one reply (see
        L{MessageResult.single}).
        """
        self._message = None
        if self._deadline is not None:
            self._deadline.stop()
        whole = result.whole
        self.writeReply(whole if whole is not None else result.single())

    def chunkAnswered(self, reply: Reply) -> None:
        """
        The answer to a BDAT chunk that did not end the message.
        """
        self.writeReply(reply)

    def _endMessage(self) -> None:
        self._message = None
        if self._deadline is not None:
            self._deadline.stop()
