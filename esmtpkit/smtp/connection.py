"""
L{SMTPConnection}: one connection of an SMTP-like wire (SMTP, LMTP) around a
L{Conversation}: the transport, input framing and flow control, the replies
and the protections that do not depend on any command.

Input goes to whichever reader is set (message content after DATA or BDAT,
a SASL exchange, the rest of an over-long line) and otherwise to
C{_commandLine}, which L{ESMTPProtocol <esmtpkit.ESMTPProtocol>} gives
SMTP's commands. Replies go out through the connection's reply writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..core.conversation import Conversation
from ..io.writer import ReplyWriter
from ..reply import Reply
from ..session import Session
from .deadline import RequestDeadline
from .lines import PushbackLineReceiver
from .reader import LineSkipper, Reader

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ..core.results import MessageResult
    from ..server.context import ServerContext

__all__ = ["SMTPConnection", "HELD_INPUT", "GREETING", "COMMAND", "REFUSED"]

# The phases of a connection (SMTPConnection._state); what input means
# within a phase is the reader's business.
GREETING = 0  # the greeting has not been sent yet
COMMAND = 1  # serving commands
REFUSED = 2  # CONNECT answered 554: only QUIT is served

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
_SHUTTING_DOWN_TEXT = "Service shutting down"
_SYNC = Reply(554, "Error: SMTP protocol synchronization", enhanced="5.5.0")
# The commands whose argument a refusal event carries (a path or a domain;
# never AUTH's, which can hold a secret).
_ARGUMENT_TOLD = frozenset({"MAIL", "RCPT", "HELO", "EHLO", "LHLO"})


class SMTPConnection(PushbackLineReceiver):
    """
    One server connection of an SMTP-like wire, driving one conversation.

    @ivar session: the connection's L{Session}.
    @ivar conversation: the L{Conversation} with the handler.
    @ivar settings: the server's L{Settings <esmtpkit.Settings>}.
    @ivar verb: the command being answered (for the events).
    @ivar argument: the text after the verb of the command being answered
        (for the events).
    """

    # Every attribute of a connection lives in a slot, those of the base
    # class (Twisted's protocol attributes included) in its own: no
    # per-connection __dict__, which matters with thousands of idle
    # connections. __init__ sets each one (a slot has no class default).
    __slots__ = (
        "server",
        "settings",
        "session",
        "conversation",
        "verb",
        "argument",
        "writer",
        "_state",
        "_reader",
        "_message",
        "_deadline",
        "_secure",
        "_errors",
        "_greetingCall",
        "_pausedAt",
        "_paused",
        "_transportPaused",
        "_draining",
        "idleSince",
    )

    def __init__(self, server: ServerContext) -> None:
        """
        @param server: what the connections of one server share.
        """
        self.transport: Any = None
        self.connected = 0
        self.factory = None
        self.line_mode = 1
        self._buffer = b""
        self._busyReceiving = False
        self.paused = False
        self.bareLineEnding = False
        self.moreInput = False
        self._pushedBack = b""
        self._closing = False
        self.server = server
        self.settings = settings = server.settings
        self.MAX_LENGTH = settings.maxLineLength
        self.session = session = Session(hostname=settings.hostname)
        self.conversation = Conversation(session, settings, server.clock, server.events)
        self.verb = "CONNECT"
        self.argument = ""
        self.writer: ReplyWriter = None  # type: ignore[assignment]
        self._state = GREETING
        self._reader: Reader | None = None
        self._message: Any = None  # the reader of the message being received
        self._deadline: RequestDeadline | None = None  # made for the first message
        self._secure: Any = None  # STARTTLS/AUTH state, made when first needed
        self._errors = 0
        self._greetingCall: IDelayedCall | None = None
        self._pausedAt = 0.0
        self._paused = 0  # why input is held: a mask of the _HELD_* reasons
        self._transportPaused = False
        self._draining = False  # see drain()
        self.idleSince: float | None = None  # see IdleTimer

    @property
    def handler(self) -> Any:
        """
        The connection's handler, or L{None} if it has none (a connection
        refused for a limit, or a handler factory that failed).
        """
        return self.conversation.handler

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

    def withHostname(self, reply: Reply) -> Reply:
        """
        C{reply} with the server's host name at the start of its first line.
        """
        first, host = reply.lines[0], self.session.hostname
        if first == host or first.startswith(host + " "):
            return reply
        return Reply(
            reply.code,
            f"{host} {first}".rstrip(),
            *reply.lines[1:],
            enhanced=reply.enhanced,
        )

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

    # -- shutdown -----------------------------------------------------------
    # A drain lets the transaction in flight finish: input is still served
    # while a transaction is open (or a hook, a SASL exchange or a TLS
    # handshake is under way); as soon as the session is idle -- now, or
    # right after the reply that ends its transaction -- it gets 421 4.3.2
    # and is closed, so nothing pipelined after that reply is served. At the
    # server's deadline, shutdown() closes whatever is left.

    def drain(self) -> None:
        """
        The server is shutting down: close the connection with 421 4.3.2
        as soon as no transaction is open and no hook is pending (at once
        if that is so now).
        """
        if self._draining or self._closing:
            return
        self._draining = True
        hooks = self.conversation.hooks
        if hooks is None or hooks.idle:
            self._closeIfIdle()

    def shutdown(self) -> None:
        """
        The shutdown deadline: 421 4.3.2 now (unless the connection is
        closing already) and close. The hook in flight is cancelled and
        nothing it answers is sent; an EOM in flight does not accept its
        message, and the open transaction ends with ABORT, then DISCONNECT.
        """
        self._draining = True
        if not self._closing:
            self._sayShuttingDown()
        self.conversation.interrupt()

    @property
    def draining(self) -> bool:
        """
        Whether the server is shutting down this connection (L{drain}).
        """
        return self._draining

    def sessionIdle(self) -> bool:
        """
        Whether no transaction is open and no message, SASL exchange or TLS
        handshake is under way (pending hooks aside).
        """
        secure = self._secure
        return (
            self.session.transaction is None
            and self._reader is None
            and self._message is None
            and (secure is None or not secure.handshaking)
        )

    def _closeIfIdle(self) -> None:
        if self._draining and not self._closing and self.sessionIdle():
            self._sayShuttingDown()

    def _sayShuttingDown(self) -> None:
        host = self.session.hostname
        reply = Reply(421, f"{host} {_SHUTTING_DOWN_TEXT}", enhanced="4.3.2")
        self.writeReply(reply, count=False)  # a 421: closes

    def timeoutConnection(self) -> None:
        """
        Called by the server's L{IdleTimer}: the client has been silent for
        C{idleTimeout} seconds.
        """
        self.limitReached("idle-timeout", "timed out")
        host = self.session.hostname
        self.writeReply(Reply(421, f"{host} Error: timeout exceeded", enhanced="4.4.2"))

    def limitReached(self, limit: str, detail: str) -> None:
        """
        Tell the observers that a protection triggered.
        """
        for notify in self.server.events.limitReached:
            notify(self.session, limit, detail)

    def close(self) -> None:
        """
        Close the connection once the replies so far are out.
        """
        if not self._closing:
            self._closing = True
            self.writer.flush()
            self.transport.loseConnection()

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

    def violation(self, what: str) -> None:
        """
        The client broke the rules of the conversation in a way that makes
        it unsafe to go on: say so and close.
        """
        self.limitReached("sync", f"protocol violation: {what}")
        self.writeReply(_SYNC, count=False)
        self.close()

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
        writer = self.writer
        if not writer.hold():
            # Re-entered: the outer call releases.
            super().dataReceived(data)
            return
        # Replies made while this input is handled go out together.
        try:
            super().dataReceived(data)
        finally:
            writer.release()

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

    # -- replies ----------------------------------------------------------

    def writeReply(
        self, reply: Reply, enhanced: bool = True, count: bool = True, last: bool = True
    ) -> None:
        """
        Send C{reply} (after those before it), then close if it is a 421 or
        the handler asked to disconnect; an error reply counts against the
        error budget unless C{count} is false.

        @param last: whether this is the last reply to the command (LMTP
            answers the end of a message once per recipient); only after
            the last may the connection close or the error count grow.
        """
        if self._closing:
            # Closed for a reason already said (QUIT, 421, 554): nothing a
            # hook answers later may follow it.
            return
        self.writer.write(reply.toBytes(enhanced and self.settings.enhancedStatusCodes))
        events = self.server.events
        if events.commandReplied:
            for notify in events.commandReplied:
                notify(self.session, self.verb, reply)
        code = reply.code
        if code >= 400 and events.commandRefused:
            verb = self.verb
            argument = self.argument if verb in _ARGUMENT_TOLD else ""
            for notify in events.commandRefused:
                notify(self.session, verb, argument, reply)
        if not last:
            return
        handler = self.conversation.handler
        if code == 421 or (handler is not None and handler.disconnect):
            self.close()
            return
        if code >= 400 and count and self._state != GREETING:
            self._countError()
        if self._draining and code != 221:  # QUIT's 221 closes by itself
            if code == 220 and self.verb == "STARTTLS":
                return  # idle once the handshake is over
            self._closeIfIdle()

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

    def _countError(self) -> None:
        """
        Every error reply counts; past the soft limit the session slows
        down, at the hard limit it ends (Postfix's smtpd_soft_error_limit
        and smtpd_hard_error_limit).
        """
        self._errors += 1
        settings = self.settings
        if settings.hardErrorLimit and self._errors >= settings.hardErrorLimit:
            self.limitReached("errors", "made too many errors")
            host = self.session.hostname
            self.writeReply(
                Reply(421, f"{host} Error: too many errors", enhanced="4.7.0")
            )
        elif settings.softErrorLimit and self._errors > settings.softErrorLimit:
            delay = settings.errorDelay * (self._errors - settings.softErrorLimit)
            hooks = self.conversation.hooks
            if delay and hooks is not None:
                hooks.now(lambda: hooks.sleep(delay))
