"""
L{ESMTPProtocol}: the server side of one SMTP connection.

Commands are read in line mode and answered through the handler's hooks
(L{HookRunner}); messages are received by L{MessageReceiver} (after DATA,
headers in line mode and the body in raw mode; after BDAT, chunks in raw
mode), after which the protocol goes back to line mode for whatever the
client pipelined. Subclasses add commands with C{do_VERB(argument)} methods
and EHLO keywords by extending L{ESMTPProtocol.extensions}.

The protocol guards itself before the handler sees anything: connection
limits, early talkers, pipelining without PIPELINING, bare line endings,
line and message size limits, an error budget, idle timeouts and a deadline
for message content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import tcp
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ..core.hooks import HookRunner
from ..handler import skippableHooks
from ..interfaces import IESMTPHandler
from ..reply import Reply, ReplyError, formatLines
from ..session import Params, Recipient, Session
from .command import checkMailbox, parseParams, parsePath, splitCommand
from .lines import PushbackLineReceiver
from .message import CHUNK, COMMAND, HEADERS, MessageReceiver
from .params import checkMailParams, checkRcptParams
from .secure import AUTH_STATE, SecureCommands

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ..server.factory import ESMTPFactory

__all__ = ["ESMTPProtocol"]

# Protocol states (and COMMAND, HEADERS, BODY_STATE, CHUNK from
# esmtpkit.smtp.message).
GREETING = "greeting"  # the greeting has not been sent yet
REFUSED = "refused"  # CONNECT answered 554: only QUIT is served
SKIPLINE = "skipline"  # raw mode: discarding the rest of an over-long line

# Commands after which a client must wait for the reply even with PIPELINING
# (RFC 2920 section 3.1; BDAT is followed by its chunk, QUIT by nothing).
_MUST_WAIT = frozenset({"HELO", "EHLO", "DATA", "STARTTLS", "AUTH"})

# Why input is held (bits of ESMTPProtocol._paused).
_HELD_HOOK = 1  # a hook is pending
_HELD_OUTPUT = 2  # the client is not reading its replies
_HELD_GREETING = 4  # waiting for greetingDelay

HELD_INPUT = 65536
"""
Unprocessed input held while paused, in bytes, beyond which the transport
stops reading.
"""

_NO_SERVICE = Reply(503, "Error: no service on this connection", enhanced="5.5.1")
_LINE_TOO_LONG = Reply(500, "Line too long", enhanced="5.5.6")
_BARE_LF = Reply(500, "Bare LF in command; lines must end with CRLF", enhanced="5.5.2")
_BARE_CR = Reply(500, "Bare CR in command", enhanced="5.5.2")


def _verbTable(cls: type) -> dict[str, Callable[[Any, str], None]]:
    """
    The C{do_VERB} methods of a protocol class, by verb.
    """
    return {name[3:]: getattr(cls, name) for name in dir(cls) if name.startswith("do_")}


def _syntax(text: str) -> Reply:
    return Reply(501, text, enhanced="5.5.4")


def _sequence(text: str) -> Reply:
    return Reply(503, text, enhanced="5.5.1")


_NO_REVERSE_PATH = _syntax("MAIL requires return-path")
_NO_FORWARD_PATH = _syntax("RCPT requires forward-path")


class ESMTPProtocol(PushbackLineReceiver, MessageReceiver, SecureCommands):
    """
    One SMTP server connection, driving one L{IESMTPHandler}.

    @ivar session: the connection's L{Session}.
    @ivar handler: the connection's handler, or L{None} if there is none
        (a connection refused for a limit, or a handler factory that failed).
    """

    # Every attribute of a connection, its base classes' included, lives in
    # a slot: no per-connection __dict__, which matters with thousands of
    # idle connections. __init__ sets each one (a slot has no class default).
    __slots__ = (
        # Twisted's Protocol and LineReceiver
        "transport",
        "connected",
        "factory",
        "line_mode",
        "_buffer",
        "_busyReceiving",
        "paused",
        "MAX_LENGTH",
        # PushbackLineReceiver
        "bareLineEnding",
        "moreInput",
        "_pushedBack",
        "_closing",
        # MessageReceiver
        "_msg",
        "_deadline",
        "_deadlineCall",
        "_chunkRemaining",
        "_chunkLast",
        "_chunkRefusal",
        "_chunkSize",
        "_skipHooks",
        # SecureCommands
        "_authFailures",
        "_sasl",
        "_saslFinal",
        "_identity",
        "_directSocket",
        # this class
        "settings",
        "log",
        "session",
        "handler",
        "_hooks",
        "_state",
        "_verb",
        "_skipReturn",
        "_skipCR",
        "_errors",
        "_greetingCall",
        "_pausedAt",
        "_paused",
        "_transportPaused",
        "_debug",
        "_outgoing",
        "idleSince",
    )

    _verbs: ClassVar[dict[str, Callable[[Any, str], None]]] = {}
    """The C{do_VERB} methods, by verb; a subclass gets its own."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._verbs = _verbTable(cls)

    def __init__(self, factory: ESMTPFactory) -> None:
        self.transport = None
        self.connected = 0
        self.factory = factory
        self.line_mode = 1
        self._buffer = b""
        self._busyReceiving = False
        self.paused = False
        self.bareLineEnding = False
        self.moreInput = False
        self._pushedBack = b""
        self._closing = False
        self._msg = None
        self._deadline = 0.0
        self._deadlineCall = None
        self._chunkRemaining = 0
        self._chunkLast = False
        self._chunkRefusal = None
        self._chunkSize = 0
        self._skipHooks = frozenset()
        self._authFailures = 0
        self._sasl = None
        self._saslFinal = None
        self._identity = None
        self._directSocket = None  # see _sendNow
        self.settings = settings = factory.settings
        self.log = factory.log
        self.MAX_LENGTH = settings.maxLineLength
        self.session = Session(hostname=settings.hostname)
        self.handler: Any = None
        self._hooks: HookRunner = None  # type: ignore[assignment]
        self._state = GREETING
        self._verb = "CONNECT"  # the command being answered, for the log
        self._skipReturn = COMMAND
        self._skipCR = False
        self._errors = 0
        self._greetingCall: IDelayedCall | None = None
        self._pausedAt = 0.0
        self._paused = 0  # why input is held: a mask of the _HELD_* reasons
        self._transportPaused = False
        self._debug = factory.log.enabled(LogLevel.debug)
        self._outgoing: list[bytes] | None = None  # see _send
        self.idleSince: float | None = None  # see IdleTimer

    # -- connection life cycle --------------------------------------------

    def connectionMade(self) -> None:
        session = self.session
        session.peer = self.transport.getPeer()
        session.host = self.factory.sharedAddress(self.transport.getHost())
        refusal = self.factory.connectionOpened(self)
        self.log.info(
            "session {session} connected from {peer}",
            session=session.id,
            peer=session.peerHost or str(session.peer),
        )
        if refusal is not None:
            self.log.info(
                "session {session} refused: {reason}",
                session=session.id,
                reason=refusal.text,
            )
            self._write(refusal)
            return
        try:
            handler = self.factory.handlerFactory()
            if not IESMTPHandler.providedBy(handler):
                raise TypeError(f"{handler!r} does not provide IESMTPHandler")
            handler.session = session
            handler.disconnect = False
        except Exception:
            self.log.failure(
                "session {session} could not build its handler", session=session.id
            )
            self._write(
                Reply(
                    421, f"{session.hostname} Service not available", enhanced="4.3.0"
                ),
            )
            return
        self.handler = handler
        self._skipHooks = skippableHooks(type(handler))
        if isinstance(self.transport, tcp.Connection) and not self.tlsActive():
            self._directSocket = self.transport.getHandle()
        if ITCPTransport.providedBy(self.transport):
            # Replies are written whole (see _send); Nagle's algorithm would
            # only hold one back until the client's delayed ACK.
            self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)
        self._hooks = HookRunner(
            handler,
            session.id,
            self.log,
            self.factory.clock,
            self.settings.hookTimeout,
            self,
        )
        self.factory.idleTimer.start(self)
        if self.settings.greetingDelay:
            # Hold any input until the greeting is out (dataReceived still
            # sees it arrive, to catch early talkers).
            self._pauseInput(_HELD_GREETING, stopTransport=False)
            self._greetingCall = self.factory.clock.callLater(
                self.settings.greetingDelay, self._greet
            )
        else:
            self._greet()

    def _greet(self) -> None:
        self._greetingCall = None
        self._hooks.run(self._hooks.callReply, "CONNECT", (), self._greeted)
        self._hooks.drive()
        if self._paused & _HELD_GREETING:
            self._resumeInput(_HELD_GREETING)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.idleSince = None
        self._cancelDeadline()
        if self._greetingCall is not None and self._greetingCall.active():
            self._greetingCall.cancel()
        self._closing = True
        self._outgoing = None  # no one left to write to
        self._directSocket = None
        self.factory.connectionClosed(self)
        if self._hooks is None:
            self._logDisconnect()
            return
        # The hook in flight, if any, finishes first (it may be the EOM that
        # ends the transaction, making ABORT moot).
        self._hooks.close(self._abortStep, self._disconnectStep)

    def _disconnectStep(self) -> None:
        self._hooks.invoke(
            "DISCONNECT", (), self._hooks.notify("DISCONNECT", self._logDisconnect)
        )

    def _logDisconnect(self) -> None:
        self.log.info(
            "session {session} disconnected ({messages} messages accepted)",
            session=self.session.id,
            messages=self.session.messages,
        )

    def timeoutConnection(self) -> None:
        """
        Called by the factory's L{IdleTimer}: the client has been silent for
        C{idleTimeout} seconds.
        """
        self.log.info("session {session} timed out", session=self.session.id)
        self._write(
            Reply(
                421,
                f"{self.session.hostname} Error: timeout exceeded",
                enhanced="4.4.2",
            )
        )

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.flushOutput()
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
        self._pausedAt = self.factory.clock.seconds()
        # Before the greeting, keep reading: a client that talks first is
        # caught by dataReceived.
        self._pauseInput(_HELD_HOOK, stopTransport=self._state != GREETING)

    def hooksDone(self) -> None:
        """
        L{HookFlow}: no hook is pending any more; input may resume.
        """
        if not self._closing:
            self._holdDeadline(self.factory.clock.seconds() - self._pausedAt)
            self.factory.idleTimer.start(self)
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

    def _violation(self, what: str) -> None:
        """
        The client broke the rules of the conversation in a way that makes
        it unsafe to go on: say so and close.
        """
        self.log.info(
            "session {session} protocol violation: {what}",
            session=self.session.id,
            what=what,
        )
        self._write(
            Reply(554, "Error: SMTP protocol synchronization", enhanced="5.5.0"),
            count=False,
        )
        self._close()

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
                self._violation("client talked before the greeting")
                return
            if self.idleSince is not None:
                self.idleSince = self.factory.clock.seconds()
        if self._outgoing is not None:
            # Re-entered (the outer call flushes), or replies are waiting
            # for the end of the reactor turn (they go out with these).
            super().dataReceived(data)
            return
        # Replies made while this input is handled go out together, in one
        # write (see _flush).
        self._outgoing = []
        try:
            super().dataReceived(data)
        finally:
            self._flush()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._state == HEADERS:
            self._headerLineTooLong()
        else:
            self._skipReturn = self._state
            self._state = SKIPLINE
            self._skipCR = False
            self.setRawMode()
        self.pushBack(line)
        self._hooks.drive()

    def lineReceived(self, line: bytes) -> None:
        state = self._state
        if state == HEADERS:
            self._headerLine(line)
        elif state == AUTH_STATE:
            self._authLine(line)
        else:
            self._commandLine(line)
        self._hooks.drive()

    def rawDataReceived(self, data: bytes) -> None:
        state = self._state
        if state == CHUNK:
            self._chunkData(data)
        elif state == SKIPLINE:
            self._skipLine(data)
            return
        elif state == HEADERS:
            self._headerData(data)
        else:
            self._bodyData(data)
        self._hooks.drive()

    def _skipLine(self, data: bytes) -> None:
        buf = b"\r" + data if self._skipCR else data
        end = buf.find(b"\n")
        if end < 0:
            self._skipCR = buf.endswith(b"\r")
            return
        self._state = self._skipReturn
        self.setLineMode(buf[end + 1 :])
        self._write(_LINE_TOO_LONG)
        self._hooks.drive()

    # -- replies ----------------------------------------------------------

    def _write(self, reply: Reply, enhanced: bool = True, count: bool = True) -> None:
        if self._closing:
            # Closed for a reason already said (QUIT, 421, 554): nothing a
            # hook answers later may follow it.
            return
        self._send(reply.toBytes(enhanced and self.settings.enhancedStatusCodes))
        if self._debug:
            self.log.debug(
                "session {session} {command} -> {code}",
                session=self.session.id,
                command=self._verb,
                code=reply.code,
            )
        if reply.code == 421 or (self.handler is not None and self.handler.disconnect):
            self._close()
        elif reply.code >= 400 and count and self._state != GREETING:
            self._countError()

    def _send(self, data: bytes) -> None:
        """
        Write C{data} to the client, after the replies already waiting (see
        L{_flush}).
        """
        if self._outgoing is not None:
            self._outgoing.append(data)
        else:
            self._outgoing = [data]
            self._flush()

    def _flush(self) -> None:
        """
        The replies collected so far are ready: on a plain TCP socket they
        go out at the end of this reactor turn, with those of the other
        connections (see L{OutputBatch}; more may join them until then, and
        all go in one write); on any other transport, and once closing, now.
        """
        if self._outgoing and self._directSocket is not None and not self._closing:
            self.factory.output.add(self, self.transport.reactor)
            return
        self.flushOutput()

    def flushOutput(self) -> None:
        """
        Write the replies collected so far, now.
        """
        outgoing, self._outgoing = self._outgoing, None
        if outgoing:
            self._sendNow(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def _sendNow(self, data: bytes) -> None:
        """
        On a plain TCP connection, offer C{data} to the socket directly: it
        almost always fits, and then the reactor does not have to watch the
        socket for writability and write it on its next turn (two epoll_ctl
        calls and a loop iteration per reply, the largest cost of a short
        SMTP exchange). The first time the socket does not take all of it,
        the rest goes to the transport, and from then on every write does,
        so nothing is ever reordered.
        """
        sock = self._directSocket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            self._directSocket = None
            data = data[sent:]
        self.transport.write(data)

    def _countError(self) -> None:
        """
        Every error reply counts; past the soft limit the session slows
        down, at the hard limit it ends (Postfix's smtpd_soft_error_limit
        and smtpd_hard_error_limit).
        """
        self._errors += 1
        settings = self.settings
        if settings.hardErrorLimit and self._errors >= settings.hardErrorLimit:
            self.log.info(
                "session {session} made too many errors", session=self.session.id
            )
            self._write(
                Reply(
                    421,
                    f"{self.session.hostname} Error: too many errors",
                    enhanced="4.7.0",
                )
            )
        elif settings.softErrorLimit and self._errors > settings.softErrorLimit:
            delay = settings.errorDelay * (self._errors - settings.softErrorLimit)
            if delay and self._hooks is not None:
                self._hooks.now(lambda: self._hooks.sleep(delay))

    def _withHostname(self, reply: Reply) -> Reply:
        first, host = reply.lines[0], self.session.hostname
        if first == host or first.startswith(host + " "):
            return reply
        return Reply(
            reply.code,
            f"{host} {first}".rstrip(),
            *reply.lines[1:],
            enhanced=reply.enhanced,
        )

    def _greeted(self, reply: Reply) -> None:
        # RFC 5321 allows only 220, 554 (no service) and 421 (closing) here.
        # The greeting goes out before the state changes, so that a refusal
        # does not count as a client error.
        kind = reply.code // 100
        if kind == 2:
            if reply.code != 220:
                reply = Reply(220, *reply.lines)
            self._write(self._withHostname(reply), enhanced=False)
            self._state = COMMAND
            return
        code = 421 if kind == 4 else 554
        self._write(Reply(code, *reply.lines, enhanced=reply.enhanced))
        self._state = REFUSED

    # -- commands ---------------------------------------------------------

    def _commandLine(self, line: bytes) -> None:
        if b"\r" in line:
            self._write(_BARE_CR)
            return
        if self.bareLineEnding and self.settings.bareLineEndings == "reject":
            self._write(_BARE_LF)
            return
        verb, arg = splitCommand(line)
        self._verb = verb or "UNKNOWN"
        if self.moreInput and self.settings.enforceSync and not self._mayPipeline(verb):
            self._violation(f"input pipelined after {self._verb}")
            return
        if self._state == REFUSED and verb != "QUIT":
            self._write(_NO_SERVICE)
            return
        method = self._verbs.get(verb)
        if method is None:
            text = line.decode("utf-8", "surrogateescape")
            self._hooks.run(self._hooks.callReply, "UNKNOWN", (text,), self._write)
        else:
            method(self, arg)

    def _mayPipeline(self, verb: str) -> bool:
        """
        Whether the client may send more before the reply to C{verb}.
        """
        if verb in ("BDAT", "QUIT"):
            return True
        return (
            self.session.esmtp and self.settings.pipelining and verb not in _MUST_WAIT
        )

    def extensions(self) -> list[str]:
        """
        The EHLO keywords to advertise on this connection.
        """
        settings = self.settings
        keywords = []
        if settings.pipelining:
            keywords.append("PIPELINING")
        if settings.size:
            limit = settings.maxMessageSize
            keywords.append(f"SIZE {limit}" if limit else "SIZE")
        if settings.eightBitMIME:
            keywords.append("8BITMIME")
        if settings.smtputf8:
            keywords.append("SMTPUTF8")
        if settings.enhancedStatusCodes:
            keywords.append("ENHANCEDSTATUSCODES")
        if settings.chunking:
            keywords.append("CHUNKING")
            if settings.binaryMIME:
                keywords.append("BINARYMIME")
        if settings.dsn:
            keywords.append("DSN")
        if settings.limits:
            keywords.append(f"LIMITS RCPTMAX={settings.maxRecipients}")
        return keywords + self._secureExtensions()

    def _ehloReply(self, reply: Reply) -> Reply:
        """
        The EHLO reply: its first line, the extensions, then the rest of the
        handler's lines (extra keywords). All but the first line are the
        same from one connection to the next, so their wire form is made once.
        """
        tail = (*self.extensions(), *reply.lines[1:])
        if not tail:
            return reply
        cache = self.factory.ehloTails
        key = (reply.code, tail)
        text = cache.get(key)
        if text is None:
            text = formatLines(reply.code, tail)
            if len(cache) < 64:
                cache[key] = text
        first = formatLines(reply.code, reply.lines[:1], final=False)
        wire = (first + text).encode("utf-8", "surrogateescape")
        return Reply._ofCleanLines(reply.code, (reply.lines[0], *tail), wire)

    def _abortStep(self) -> None:
        """
        End the open transaction, if any, with ABORT.
        """
        if self.session.transaction is None:
            return

        def ended() -> None:
            self.session.transaction = None

        self._hooks.invoke("ABORT", (), self._hooks.notify("ABORT", ended))

    def do_HELO(self, arg: str) -> None:
        self._hello("HELO", arg)

    def do_EHLO(self, arg: str) -> None:
        self._hello("EHLO", arg)

    def _hello(self, verb: str, arg: str) -> None:
        if not arg:
            self._write(_syntax(f"{verb} requires domain address"))
            return
        if not arg.isprintable() or " " in arg:
            self._write(_syntax("Invalid domain name"))
            return

        def greeted(reply: Reply) -> None:
            if reply.code // 100 == 2:
                self.session.heloName = arg
                self.session.esmtp = verb == "EHLO"
                reply = self._withHostname(reply)
                if verb == "EHLO":
                    reply = self._ehloReply(reply)
            self._write(reply, enhanced=False)

        self._hooks.now(
            self._abortStep, lambda: self._hooks.callReply(verb, (arg,), greeted)
        )

    def do_MAIL(self, arg: str) -> None:
        session = self.session
        if session.heloName is None:
            self._write(_sequence("Error: send HELO/EHLO first"))
            return
        if session.transaction is not None:
            self._write(_sequence("Sender already specified"))
            return
        refusal = self._tlsRequired()
        if refusal is None and self.settings.requireAuth and not session.authenticated:
            refusal = Reply(530, "Authentication required", enhanced="5.7.0")
        if refusal is not None:
            self._write(refusal)
            return
        try:
            sender, params = self._mailArguments(arg)
        except ReplyError as e:
            self._write(e.reply)
            return
        session.transaction = session.newTransaction(sender, params)
        self._resetMessage()

        def answered(reply: Reply) -> None:
            if reply.code // 100 != 2:
                session.transaction = None
            self._write(reply)

        self._hooks.run(self._hooks.callReply, "MAIL", (sender, params), answered)

    def _mailArguments(self, arg: str) -> tuple[str, Params]:
        sender, text = parsePath(arg, "FROM", _NO_REVERSE_PATH)
        params = parseParams(text, utf8=self.settings.smtputf8)
        if params:
            checkMailParams(
                params,
                self.settings,
                self.session.esmtp,
                tls=self.tlsActive(),
                auth=self._authOffered(),
                authenticated=self.session.authenticated is not None,
            )
        if sender:
            utf8 = self.settings.smtputf8 and "SMTPUTF8" in params
            checkMailbox(sender, utf8, sender=True)
        return sender, params

    def do_RCPT(self, arg: str) -> None:
        transaction = self.session.transaction
        if transaction is None:
            self._write(_sequence("Need MAIL before RCPT"))
            return
        try:
            recipient, text = parsePath(arg, "TO", _NO_FORWARD_PATH)
            utf8 = self.settings.smtputf8 and "SMTPUTF8" in transaction.mailParams
            params = checkRcptParams(
                parseParams(text, utf8=utf8), self.settings, self.session.esmtp, utf8
            )
            if recipient.lower() != "postmaster":
                checkMailbox(recipient, utf8, sender=False)
        except ReplyError as e:
            self._write(e.reply)
            return
        if len(transaction.recipients) >= self.settings.maxRecipients:
            self._write(Reply(452, "Too many recipients", enhanced="4.5.3"))
            return

        def answered(reply: Reply) -> None:
            if reply.code // 100 == 2:
                transaction.recipients.append(Recipient(recipient, params))
            self._write(reply)

        self._hooks.run(self._hooks.callReply, "RCPT", (recipient, params), answered)

    def _transactionError(self) -> Reply | None:
        """
        Why the transaction cannot take message content now, if it cannot.
        """
        transaction = self.session.transaction
        if transaction is None:
            return _sequence("Need MAIL command")
        if not transaction.recipients:
            return _sequence("Need RCPT (recipient)")
        return None

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        refusal = _syntax("Syntax: DATA") if arg else self._transactionError()
        if refusal is None and transaction is not None:
            if self._msg is not None and self._msg.chunking:
                refusal = _sequence("DATA not allowed after BDAT")
            elif transaction.mailParams.get("BODY") == "BINARYMIME":
                refusal = _sequence("BINARYMIME needs BDAT, not DATA")
        if refusal is not None:
            self._write(refusal)
            return
        self._hooks.run(self._hooks.callReply, "DATA", (), self._dataAnswered)

    def _dataAnswered(self, reply: Reply) -> None:
        if reply.code // 100 == 3:
            self._beginMessage()
        self._write(reply)

    def do_BDAT(self, arg: str) -> None:
        words = arg.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or len(words[0]) > 15
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # Without a size we cannot tell where the chunk ends: stop here
            # rather than read message content as commands.
            self._write(_syntax("Syntax: BDAT size [LAST]"))
            self._close()
            return
        size, last = int(words[0]), len(words) == 2
        refusal = self._transactionError()
        if not self.settings.chunking or not self.session.esmtp:
            refusal = Reply(502, "CHUNKING not offered", enhanced="5.5.1")
        if refusal is not None or self._msg is not None:
            self._readChunk(size, last, refusal)
            return

        def answered(reply: Reply) -> None:
            # The first chunk opens the message through the DATA hook, which
            # must let it in (354) as for DATA.
            self._readChunk(size, last, None if reply.code // 100 == 3 else reply)

        self._verb = "DATA"
        self.setRawMode()
        self._state = CHUNK
        self._hooks.run(self._hooks.callReply, "DATA", (), answered)

    def do_RSET(self, arg: str) -> None:
        if arg:
            self._write(_syntax("Syntax: RSET"))
            return
        self._hooks.now(
            self._abortStep, lambda: self._hooks.callReply("RSET", (), self._write)
        )

    def do_NOOP(self, arg: str) -> None:
        self._hooks.run(self._hooks.callReply, "NOOP", (), self._write)

    def do_VRFY(self, arg: str) -> None:
        self._addressQuery("VRFY", arg)

    def do_EXPN(self, arg: str) -> None:
        self._addressQuery("EXPN", arg)

    def _addressQuery(self, verb: str, arg: str) -> None:
        if not arg:
            self._write(_syntax(f"{verb} requires an address"))
            return
        self._hooks.run(self._hooks.callReply, verb, (arg,), self._write)

    def do_HELP(self, arg: str) -> None:
        topic = arg or None
        self._hooks.run(self._hooks.callReply, "HELP", (topic,), self._write)

    def do_QUIT(self, arg: str) -> None:
        if arg:
            self._write(_syntax("Syntax: QUIT"))
            return

        def bye(reply: Reply) -> None:
            self._write(reply)
            self._close()

        self._hooks.now(self._abortStep, lambda: self._hooks.callReply("QUIT", (), bye))

    def _messageDone(self, reply: Reply) -> None:
        self._state = COMMAND
        self._write(reply)


ESMTPProtocol._verbs = _verbTable(ESMTPProtocol)
