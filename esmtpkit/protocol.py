"""
L{ESMTPProtocol}: the server side of one SMTP connection.

Commands and message headers are read in line mode; after the headers the
protocol switches to raw mode and streams the body to the handler in chunks,
then switches back to line mode for whatever the client pipelined after the
end of the data.

Every handler hook goes through one choke point, L{ESMTPProtocol._invoke}.
The work a command causes is a queue of steps run by L{ESMTPProtocol._drive};
when a hook returns a Deferred that has not fired, the queue and the reading
of input both stop until it fires. That is what keeps replies in order under
pipelining, keeps one hook in flight per connection, and makes a slow handler
push back on the client (the transport is paused, so the kernel's buffers
fill up and TCP flow control does the rest).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import TimeoutError as DeferredTimeout
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from .command import (
    checkMailbox,
    parseParams,
    parsePath,
    splitCommand,
)
from .data import BODY, END, BodyScanner, HeaderParser
from .handler import defaultReply
from .interfaces import IESMTPHandler
from .reply import Reply, ReplyError, toReply
from .session import Params, Recipient, Session

if TYPE_CHECKING:
    from .factory import ESMTPFactory

__all__ = ["ESMTPProtocol"]

Step = Callable[[], None]

# Protocol states.
GREETING = "greeting"  # CONNECT has not answered yet
COMMAND = "command"
REFUSED = "refused"  # CONNECT answered 554: only QUIT is served
HEADERS = "headers"  # reading message header lines
BODY_STATE = "body"  # raw mode: streaming the body
SKIPLINE = "skipline"  # raw mode: discarding the rest of an over-long line

_ENHANCED_OK = {"MAIL": "2.1.0", "RCPT": "2.1.5", "VRFY": "2.5.0"}

_NO_SERVICE = Reply(503, "Error: no service on this connection", enhanced="5.5.1")
_HOOK_FAILED = Reply(451, "Requested action aborted: local error", enhanced="4.3.0")
_HOOK_TIMEOUT = Reply(451, "Requested action aborted: timed out", enhanced="4.3.0")
_LINE_TOO_LONG = Reply(500, "Line too long", enhanced="5.5.6")
_TOO_BIG = Reply(
    552, "Message size exceeds fixed maximum message size", enhanced="5.3.4"
)
_HEADERS_TOO_BIG = Reply(552, "Message header section too large", enhanced="5.3.4")


def _syntax(text: str) -> Reply:
    return Reply(501, text, enhanced="5.5.4")


def _sequence(text: str) -> Reply:
    return Reply(503, text, enhanced="5.5.1")


class ESMTPProtocol(LineReceiver, TimeoutMixin):
    """
    One SMTP server connection, driving one L{IESMTPHandler}.

    Subclasses add commands by defining C{do_VERB(argument)} methods and
    extensions by extending L{extensions}.

    @ivar session: the connection's L{Session}.
    @ivar handler: the connection's handler, or L{None} if building it failed.
    """

    delimiter = b"\r\n"
    transport: Any

    def __init__(self, factory: ESMTPFactory) -> None:
        self.factory = factory
        self.settings = settings = factory.settings
        self.log = factory.log
        self.MAX_LENGTH = settings.maxLineLength
        self.callLater = factory.clock.callLater  # type: ignore[method-assign,assignment]
        self.session = Session(hostname=settings.hostname)
        self.handler: Any = None
        self._state = GREETING
        self._steps: deque[Step] = deque()
        self._driving = False
        self._pending: Deferred[Any] | None = None
        self._pausedForHook = False
        self._unreadBuffer = b""
        self._closing = False
        self._lost = False
        self._tornDown = False
        self._debug = settings.logLevel.name == "debug"
        self._verb = "CONNECT"  # the command being answered, for the log
        # The message being received.
        self._headerParser = HeaderParser()
        self._rawHeaders = bytearray()
        self._scanner = BodyScanner()
        self._messageSize = 0
        self._failure: Reply | None = None
        self._bodyQueue = b""
        self._bodyPos = 0
        self._endOfDataSeen = False
        self._skipCR = False
        self._skipReturn = COMMAND

    # -- connection life cycle --------------------------------------------

    def connectionMade(self) -> None:
        session = self.session
        session.peer = self.transport.getPeer()
        session.host = self.transport.getHost()
        self.factory.connectionOpened(self)
        self.log.info(
            "session {session} connected from {peer}",
            session=session.id,
            peer=session.peerHost or str(session.peer),
        )
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
                enhanced=False,
            )
            self._close()
            return
        self.handler = handler
        self.setTimeout(self.settings.idleTimeout)
        self._now(lambda: self._callReply("CONNECT", (), self._greeted))
        self._drive()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        self._lost = self._closing = True
        self.factory.connectionClosed(self)
        if self._pending is None:
            self._teardown()
            self._drive()
        # Otherwise _hookFired tears down once the pending hook has finished.

    def timeoutConnection(self) -> None:
        self.log.info("session {session} timed out", session=self.session.id)
        self._write(
            Reply(
                421,
                f"{self.session.hostname} Error: timeout exceeded",
                enhanced="4.4.2",
            )
        )
        self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()

    def _teardown(self) -> None:
        if self._tornDown:
            return
        self._tornDown = True
        self._steps.clear()
        if self.handler is not None:
            if self.session.transaction is not None:
                self._now(self._abortStep, self._disconnectStep)
            else:
                self._now(self._disconnectStep)
        else:
            self._logDisconnect()

    def _disconnectStep(self) -> None:
        self._invoke(
            "DISCONNECT", (), self._notified("DISCONNECT", self._logDisconnect)
        )

    def _logDisconnect(self) -> None:
        self.log.info(
            "session {session} disconnected ({messages} messages accepted)",
            session=self.session.id,
            messages=self.session.messages,
        )

    # -- input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        LineReceiver's loop, rewritten so that line and raw mode can hand
        bytes back to each other at any point (L{_unread}) without losing
        or reordering them, and so that a long run of pipelined commands is
        split in linear time.
        """
        if self._busyReceiving:
            self._buffer += data
            return
        if self._lost:
            return
        if data:
            self.resetTimeout()
        self._busyReceiving = True
        try:
            buf = self._buffer + data if self._buffer else data
            self._buffer = b""
            pos = 0
            while pos < len(buf) and not self.paused and not self._closing:
                if self.line_mode:
                    end = buf.find(b"\r\n", pos)
                    if end < 0 or end - pos > self.MAX_LENGTH:
                        if end < 0 and len(buf) - pos <= self.MAX_LENGTH + 1:
                            break
                        rest, pos = buf[pos:], len(buf)
                        self.lineLengthExceeded(rest)
                    else:
                        line, pos = buf[pos:end], end + 2
                        self.lineReceived(line)
                else:
                    chunk, pos = (buf[pos:] if pos else buf), len(buf)
                    self.rawDataReceived(chunk)
                if self._unreadBuffer or self._buffer:
                    buf = self._unreadBuffer + buf[pos:] + self._buffer
                    self._unreadBuffer = self._buffer = b""
                    pos = 0
            self._buffer = buf[pos:] if pos < len(buf) else b""
        finally:
            self._busyReceiving = False

    def _unread(self, data: bytes) -> None:
        """
        Put C{data} back in front of the unprocessed input.
        """
        if not data:
            return
        if self._busyReceiving:
            self._unreadBuffer = data + self._unreadBuffer
        else:
            self._buffer = data + self._buffer

    def setLineMode(self, extra: bytes = b"") -> None:
        self.line_mode = 1
        self._unread(extra)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._state == HEADERS:
            # Drain the rest of the message; the line may end right before
            # the terminator, so scan it as body bytes that start mid-line.
            self._failMessage(_HEADERS_TOO_BIG)
            self._startBody(atLineStart=False)
        else:
            self._skipReturn = self._state
            self._state = SKIPLINE
            self._skipCR = False
            self.setRawMode()
        self._unread(line)
        self._drive()

    def lineReceived(self, line: bytes) -> None:
        if self._state == HEADERS:
            self._headerLine(line)
        else:
            self._commandLine(line)
        self._drive()

    def rawDataReceived(self, data: bytes) -> None:
        if self._state == SKIPLINE:
            self._skipLine(data)
            return
        pieces, leftover = self._scanner.feed(data)
        if leftover is not None:
            self._verb = "EOM"
            self._endOfDataSeen = True
            self.setLineMode(leftover)
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._queueBody(body)
        self._drive()

    def _skipLine(self, data: bytes) -> None:
        buf = b"\r" + data if self._skipCR else data
        end = buf.find(b"\r\n")
        if end < 0:
            self._skipCR = buf.endswith(b"\r")
            return
        self._state = self._skipReturn
        self.setLineMode(buf[end + 2 :])
        self._write(_LINE_TOO_LONG)

    # -- the hook choke point -----------------------------------------------

    def _now(self, *steps: Step) -> None:
        """
        Run C{steps} next, before anything already queued.
        """
        self._steps.extendleft(reversed(steps))

    def _drive(self) -> None:
        """
        Run queued steps until the queue is empty or a hook is pending; then
        resume reading input if a hook had paused it.
        """
        if self._driving:
            return
        self._driving = True
        try:
            while self._steps and self._pending is None:
                self._steps.popleft()()
        finally:
            self._driving = False
        if self._pending is None and self._pausedForHook:
            self._pausedForHook = False
            self.paused = False
            if self._lost:
                return
            self.setTimeout(self.settings.idleTimeout)
            if not self.transport.disconnecting:
                self.transport.resumeProducing()
            self.dataReceived(b"")

    def _invoke(
        self, name: str, args: tuple[Any, ...], done: Callable[[Any], None]
    ) -> None:
        """
        Call hook C{name}; pass its result (a value, or a L{Failure}) to
        C{done}, now if the hook answered synchronously, else when its
        Deferred fires. C{done} must not call hooks itself: it queues steps.
        """
        try:
            result = getattr(self.handler, name)(*args)
        except Exception:
            done(Failure())
            return
        if not isinstance(result, Deferred) and not inspect.iscoroutine(result):
            done(result)
            return
        deferred: Deferred[Any] = ensureDeferred(result)
        settled: list[Any] = []

        def fired(value: Any) -> None:
            if self._pending is deferred:
                self._hookFired(value, done)
            else:
                settled.append(value)

        if not deferred.called and self.settings.hookTimeout:
            deferred.addTimeout(self.settings.hookTimeout, self.factory.clock)
        deferred.addBoth(fired)
        if settled:
            done(settled[0])
            return
        self._pending = deferred
        if not self._pausedForHook:
            self._pausedForHook = True
            self.paused = True
            self.setTimeout(None)
            if not self._lost and not self.transport.disconnecting:
                self.transport.pauseProducing()

    def _hookFired(self, value: Any, done: Callable[[Any], None]) -> None:
        self._pending = None
        done(value)
        if self._lost:
            self._teardown()
        self._drive()

    def _hookFailure(self, name: str, failure: Failure) -> Reply:
        """
        The reply for a hook that raised or whose Deferred failed.
        """
        if isinstance(failure.value, ReplyError):
            return failure.value.reply
        if failure.check(DeferredTimeout, CancelledError):
            self.log.error(
                "session {session} hook {hook} timed out",
                session=self.session.id,
                hook=name,
            )
            return _HOOK_TIMEOUT
        self.log.failure(
            "session {session} hook {hook} failed",
            failure=failure,
            session=self.session.id,
            hook=name,
        )
        return _HOOK_FAILED

    def _callReply(
        self, name: str, args: tuple[Any, ...], then: Callable[[Reply], None]
    ) -> None:
        """
        Call a reply hook and pass the reply it gives to C{then}.
        """

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                reply = self._hookFailure(name, value)
            elif value is None:
                reply = defaultReply(name, self.handler, args)
            else:
                try:
                    reply = toReply(value)
                except (TypeError, ValueError):
                    self.log.failure(
                        "session {session} hook {hook} returned a bad reply",
                        session=self.session.id,
                        hook=name,
                    )
                    reply = _HOOK_FAILED
            enhanced = self._defaultEnhanced(name, reply.code)
            then(reply.withEnhanced(enhanced) if enhanced else reply)

        self._invoke(name, args, done)

    def _notified(
        self, name: str, then: Callable[[], None] | None = None
    ) -> Callable[[Any], None]:
        """
        A C{done} for hooks without a reply (ABORT, DISCONNECT): log a
        failure, then run C{then}.
        """

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self._hookFailure(name, value)
            if then is not None:
                then()

        return done

    @staticmethod
    def _defaultEnhanced(name: str, code: int) -> str | None:
        kind = code // 100
        if kind == 2:
            return _ENHANCED_OK.get(name, "2.0.0")
        return None if kind == 3 else f"{kind}.0.0"

    # -- replies ----------------------------------------------------------

    def _write(self, reply: Reply, enhanced: bool = True) -> None:
        self.transport.write(
            reply.toBytes(enhanced and self.settings.enhancedStatusCodes)
        )
        if self._debug:
            self.log.debug(
                "session {session} {command} -> {code}",
                session=self.session.id,
                command=self._verb,
                code=reply.code,
            )
        if reply.code == 421 or (self.handler is not None and self.handler.disconnect):
            self._close()

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
        if reply.code // 100 == 2:
            self._state = COMMAND
            reply = self._withHostname(reply)
        else:
            self._state = REFUSED
        self._write(reply, enhanced=False)

    # -- commands ---------------------------------------------------------

    def _commandLine(self, line: bytes) -> None:
        if b"\n" in line or b"\r" in line:
            self._write(Reply(500, "Bare CR or LF in command line", enhanced="5.5.2"))
            return
        verb, arg = splitCommand(line)
        self._verb = verb or "UNKNOWN"
        if self._state == REFUSED and verb != "QUIT":
            self._write(_NO_SERVICE)
            return
        method = getattr(self, "do_" + verb, None) if verb else None
        if method is None:
            text = line.decode("utf-8", "surrogateescape")
            self._now(lambda: self._callReply("UNKNOWN", (text,), self._write))
        else:
            method(arg)

    def extensions(self) -> list[str]:
        """
        The EHLO keywords to advertise on this connection.
        """
        settings = self.settings
        keywords = []
        if settings.pipelining:
            keywords.append("PIPELINING")
        keywords.append(
            f"SIZE {settings.maxMessageSize}" if settings.maxMessageSize else "SIZE"
        )
        keywords.append("8BITMIME")
        if settings.smtputf8:
            keywords.append("SMTPUTF8")
        if settings.enhancedStatusCodes:
            keywords.append("ENHANCEDSTATUSCODES")
        return keywords

    def _abortStep(self) -> None:
        """
        End the open transaction, if any, with ABORT.
        """
        if self.session.transaction is None:
            return

        def ended() -> None:
            self.session.transaction = None

        self._invoke("ABORT", (), self._notified("ABORT", ended))

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
                    reply = Reply(
                        reply.code,
                        reply.lines[0],
                        *self.extensions(),
                        *reply.lines[1:],
                    )
            self._write(reply, enhanced=False)

        self._now(self._abortStep, lambda: self._callReply(verb, (arg,), greeted))

    def do_MAIL(self, arg: str) -> None:
        session = self.session
        if session.heloName is None:
            self._write(_sequence("Error: send HELO/EHLO first"))
            return
        if session.transaction is not None:
            self._write(_sequence("Sender already specified"))
            return
        try:
            sender, params = self._mailArguments(arg)
        except ReplyError as e:
            self._write(e.reply)
            return
        session.transaction = session.newTransaction(sender, params)

        def answered(reply: Reply) -> None:
            if reply.code // 100 != 2:
                session.transaction = None
            self._write(reply)

        self._now(lambda: self._callReply("MAIL", (sender, params), answered))

    def _mailArguments(self, arg: str) -> tuple[str, Params]:
        sender, text = parsePath(arg, "FROM", _syntax("MAIL requires return-path"))
        params = self._checkParams(parseParams(text, utf8=self.settings.smtputf8))
        if "SIZE" in params:
            size = params["SIZE"]
            if size is None or not size.isdigit() or len(size) > 20:
                raise ReplyError(_syntax("Bad SIZE parameter"))
            limit = self.settings.maxMessageSize
            if limit and int(size) > limit:
                raise ReplyError(_TOO_BIG)
        if "BODY" in params:
            body = (params["BODY"] or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise ReplyError(
                    Reply(555, f"Unsupported BODY type {body}", enhanced="5.5.4")
                )
            params["BODY"] = body
        if "SMTPUTF8" in params:
            if params["SMTPUTF8"] is not None or not self.settings.smtputf8:
                raise ReplyError(_syntax("Bad SMTPUTF8 parameter"))
        if sender:
            checkMailbox(sender, "SMTPUTF8" in params, sender=True)
        return sender, params

    def _checkParams(self, params: Params) -> Params:
        if params and not self.session.esmtp:
            raise ReplyError(Reply(555, "ESMTP parameters need EHLO", enhanced="5.5.4"))
        return params

    def do_RCPT(self, arg: str) -> None:
        transaction = self.session.transaction
        if transaction is None:
            self._write(_sequence("Need MAIL before RCPT"))
            return
        try:
            recipient, text = parsePath(
                arg, "TO", _syntax("RCPT requires forward-path")
            )
            utf8 = "SMTPUTF8" in transaction.mailParams
            params = self._checkParams(parseParams(text, utf8=utf8))
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

        self._now(lambda: self._callReply("RCPT", (recipient, params), answered))

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        if arg:
            self._write(_syntax("Syntax: DATA"))
        elif transaction is None:
            self._write(_sequence("Need MAIL command"))
        elif not transaction.recipients:
            self._write(_sequence("Need RCPT (recipient)"))
        else:
            self._now(lambda: self._callReply("DATA", (), self._dataAnswered))

    def _dataAnswered(self, reply: Reply) -> None:
        if reply.code // 100 == 3:
            self._state = HEADERS
            self.MAX_LENGTH = self.settings.maxHeaderSize
            self._headerParser = HeaderParser()
            self._rawHeaders = bytearray()
            self._messageSize = 0
            self._failure = None
            self._endOfDataSeen = False
        self._write(reply, enhanced=False)

    def do_RSET(self, arg: str) -> None:
        if arg:
            self._write(_syntax("Syntax: RSET"))
            return
        self._now(self._abortStep, lambda: self._callReply("RSET", (), self._write))

    def do_NOOP(self, arg: str) -> None:
        self._now(lambda: self._callReply("NOOP", (), self._write))

    def do_VRFY(self, arg: str) -> None:
        self._addressQuery("VRFY", arg)

    def do_EXPN(self, arg: str) -> None:
        self._addressQuery("EXPN", arg)

    def _addressQuery(self, verb: str, arg: str) -> None:
        if not arg:
            self._write(_syntax(f"{verb} requires an address"))
            return
        self._now(lambda: self._callReply(verb, (arg,), self._write))

    def do_HELP(self, arg: str) -> None:
        topic = arg or None
        self._now(lambda: self._callReply("HELP", (topic,), self._write))

    def do_QUIT(self, arg: str) -> None:
        if arg:
            self._write(_syntax("Syntax: QUIT"))
            return

        def bye(reply: Reply) -> None:
            self._write(reply)
            self._close()

        self._now(self._abortStep, lambda: self._callReply("QUIT", (), bye))

    # -- the message --------------------------------------------------------

    def _headerLine(self, line: bytes) -> None:
        if line == b".":
            self._verb = "EOM"
            self._now(self._flushHeader, self._eohStep, self._endOfData)
            return
        if line[:1] == b".":
            line = line[1:]
        kind, completed = self._headerParser.line(line)
        if kind != BODY:
            self._rawHeaders += line
            self._rawHeaders += b"\r\n"
            if not self._countContent(len(line) + 2):
                self._startBody()
                return
            if len(self._rawHeaders) > self.settings.maxHeaderSize:
                self._failMessage(_HEADERS_TOO_BIG)
                self._startBody()
                return
        if completed is not None:
            self._now(lambda: self._contentHook("HEADER", completed))
        if kind == END:
            self._startBody()
        elif kind == BODY:
            self._startBody()
            self._queueBody(line + b"\r\n")

    def _flushHeader(self) -> None:
        completed = self._headerParser.finish()
        if completed is not None:
            self._contentHook("HEADER", completed)

    def _startBody(self, atLineStart: bool = True) -> None:
        """
        The header section is over: queue EOH and switch to raw mode.
        """
        self._state = BODY_STATE
        self.MAX_LENGTH = self.settings.maxLineLength
        self._scanner = BodyScanner(atLineStart)
        self._bodyQueue = b""
        self._bodyPos = 0
        self.setRawMode()
        if self._failure is None:
            self._queueAfter(self._flushHeader, self._eohStep)

    def _eohStep(self) -> None:
        transaction = self.session.transaction
        if transaction is not None:
            transaction.rawHeaders = bytes(self._rawHeaders)
        self._contentHook("EOH", ())

    def _queueAfter(self, *steps: Step) -> None:
        self._steps.extend(steps)

    def _contentHook(self, name: str, args: tuple[Any, ...]) -> None:
        """
        Call HEADER, EOH or BODY unless the message was already refused; a
        failure refuses the message.
        """
        if self._failure is not None:
            return
        if name == "HEADER":
            transaction = self.session.transaction
            if transaction is not None:
                transaction.headers.append(args)

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self._failMessage(self._hookFailure(name, value))

        self._invoke(name, args, done)

    def _failMessage(self, reply: Reply) -> None:
        """
        Refuse the message being received: no more content hooks, ABORT now,
        C{reply} once the client has sent the end of the data.
        """
        if self._failure is not None:
            return
        self._failure = reply
        transaction = self.session.transaction
        self.log.info(
            "session {session} message {transaction} refused while receiving: "
            "{code} {text}",
            session=self.session.id,
            transaction=transaction.id if transaction else "-",
            code=reply.code,
            text=reply.text,
        )
        self._now(self._abortStep)

    def _countContent(self, size: int) -> bool:
        """
        Add C{size} bytes to the message size; refuse the message once it
        passes the limit. Returns whether the message is still wanted.
        """
        self._messageSize += size
        limit = self.settings.maxMessageSize
        if limit and self._messageSize > limit:
            self._failMessage(_TOO_BIG)
        return self._failure is None

    def _queueBody(self, body: bytes) -> None:
        if self._bodyPos < len(self._bodyQueue):
            body = self._bodyQueue[self._bodyPos :] + body
        self._bodyQueue = body
        self._bodyPos = 0
        self._queueAfter(self._pumpBody)

    def _pumpBody(self) -> None:
        """
        Hand the next chunk of queued body bytes to BODY (one hook call per
        step, so a pending BODY stops the pump), then end the message if
        its end was seen.
        """
        body, start = self._bodyQueue, self._bodyPos
        if start < len(body):
            size = self.settings.chunkSize
            piece = body[start : start + size] if start or len(body) > size else body
            self._bodyPos = start + len(piece)
            self._now(self._pumpBody)
            if self._countContent(len(piece)):
                self._contentHook("BODY", (piece,))
            return
        self._bodyQueue = b""
        self._bodyPos = 0
        if self._endOfDataSeen:
            self._endOfDataSeen = False
            self._endOfData()

    def _endOfData(self) -> None:
        transaction = self.session.transaction
        if transaction is not None:
            transaction.size = self._messageSize
        failure = self._failure
        if failure is not None:
            self._messageDone(failure)
            return

        def answered(reply: Reply) -> None:
            if transaction is not None:
                self._logMessage(transaction, reply)
            if reply.code // 100 == 2:
                self.session.messages += 1
            self.session.transaction = None
            self._messageDone(reply)

        self._callReply("EOM", (), answered)

    def _messageDone(self, reply: Reply) -> None:
        self._state = COMMAND
        self._failure = None
        self._rawHeaders = bytearray()
        self.MAX_LENGTH = self.settings.maxLineLength
        self._write(reply)

    def _logMessage(self, transaction: Any, reply: Reply) -> None:
        verdict = "accepted" if reply.code // 100 == 2 else "refused"
        self.log.info(
            "session {session} message {transaction} {verdict}: from=<{sender}> "
            "recipients={recipients} size={size} reply={code}",
            session=self.session.id,
            transaction=transaction.id,
            verdict=verdict,
            sender=transaction.sender,
            recipients=len(transaction.recipients),
            size=transaction.size,
            code=reply.code,
        )
