"""
L{ESMTPProtocol}: the server side of one SMTP connection.

Commands are read in line mode and answered through the handler's hooks
(L{HookRunner}); the message after DATA is received by L{MessageReceiver}
(headers in line mode, the body in raw mode), after which the protocol goes
back to line mode for whatever the client pipelined after the end of the
data. Subclasses add commands with C{do_VERB(argument)} methods and EHLO
keywords by extending L{ESMTPProtocol.extensions}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from .command import checkMailbox, parseParams, parsePath, splitCommand
from .hooks import HookRunner
from .interfaces import IESMTPHandler
from .lines import PushbackLineReceiver
from .message import HEADERS, TOO_BIG, MessageReceiver
from .reply import Reply, ReplyError
from .session import Params, Recipient, Session

if TYPE_CHECKING:
    from .factory import ESMTPFactory

__all__ = ["ESMTPProtocol"]

# Protocol states (and HEADERS, BODY_STATE from esmtpkit.message).
GREETING = "greeting"  # CONNECT has not answered yet
COMMAND = "command"
REFUSED = "refused"  # CONNECT answered 554: only QUIT is served
SKIPLINE = "skipline"  # raw mode: discarding the rest of an over-long line

_NO_SERVICE = Reply(503, "Error: no service on this connection", enhanced="5.5.1")
_LINE_TOO_LONG = Reply(500, "Line too long", enhanced="5.5.6")


def _syntax(text: str) -> Reply:
    return Reply(501, text, enhanced="5.5.4")


def _sequence(text: str) -> Reply:
    return Reply(503, text, enhanced="5.5.1")


class ESMTPProtocol(PushbackLineReceiver, MessageReceiver, TimeoutMixin):
    """
    One SMTP server connection, driving one L{IESMTPHandler}.

    @ivar session: the connection's L{Session}.
    @ivar handler: the connection's handler, or L{None} if building it failed.
    """

    def __init__(self, factory: ESMTPFactory) -> None:
        self.factory = factory
        self.settings = settings = factory.settings
        self.log = factory.log
        self.MAX_LENGTH = settings.maxLineLength
        self.callLater = factory.clock.callLater  # type: ignore[method-assign,assignment]
        self.session = Session(hostname=settings.hostname)
        self.handler: Any = None
        self._hooks: HookRunner = None  # type: ignore[assignment]
        self._state = GREETING
        self._skipReturn = COMMAND
        self._skipCR = False
        self._closing = False
        self._debug = settings.logLevel.name == "debug"
        self._verb = "CONNECT"  # the command being answered, for the log

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
            return
        self.handler = handler
        self._hooks = HookRunner(
            handler,
            session.id,
            self.log,
            self.factory.clock,
            self.settings.hookTimeout,
            self._pauseForHook,
            self._resumeAfterHook,
        )
        self.setTimeout(self.settings.idleTimeout)
        self._hooks.now(lambda: self._hooks.callReply("CONNECT", (), self._greeted))
        self._hooks.drive()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        self._closing = True
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
            self.transport.loseConnection()

    def _pauseForHook(self) -> None:
        self.paused = True
        self.setTimeout(None)
        if not self._closing:
            self.transport.pauseProducing()

    def _resumeAfterHook(self) -> None:
        self.paused = False
        if self._closing:
            return
        self.setTimeout(self.settings.idleTimeout)
        self.transport.resumeProducing()
        self.dataReceived(b"")

    # -- input ------------------------------------------------------------

    def stopReading(self) -> bool:
        return self._closing or super().stopReading()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if data:
            self.resetTimeout()
        super().dataReceived(data)

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
        if self._state == HEADERS:
            self._headerLine(line)
        else:
            self._commandLine(line)
        self._hooks.drive()

    def rawDataReceived(self, data: bytes) -> None:
        if self._state == SKIPLINE:
            self._skipLine(data)
            return
        self._bodyData(data)
        self._hooks.drive()

    def _skipLine(self, data: bytes) -> None:
        buf = b"\r" + data if self._skipCR else data
        end = buf.find(b"\r\n")
        if end < 0:
            self._skipCR = buf.endswith(b"\r")
            return
        self._state = self._skipReturn
        self.setLineMode(buf[end + 2 :])
        self._write(_LINE_TOO_LONG)

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
        # RFC 5321 allows only 220, 554 (no service) and 421 (closing) here.
        kind = reply.code // 100
        if kind == 2:
            self._state = COMMAND
            reply = self._withHostname(Reply(220, *reply.lines))
            self._write(reply, enhanced=False)
            return
        self._state = REFUSED
        code = 421 if kind == 4 else 554
        self._write(Reply(code, *reply.lines, enhanced=reply.enhanced))

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
            self._hooks.now(
                lambda: self._hooks.callReply("UNKNOWN", (text,), self._write)
            )
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
                    reply = Reply(
                        reply.code,
                        reply.lines[0],
                        *self.extensions(),
                        *reply.lines[1:],
                    )
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

        self._hooks.now(
            lambda: self._hooks.callReply("MAIL", (sender, params), answered)
        )

    def _mailArguments(self, arg: str) -> tuple[str, Params]:
        sender, text = parsePath(arg, "FROM", _syntax("MAIL requires return-path"))
        params = self._checkParams(parseParams(text, utf8=self.settings.smtputf8))
        if "SIZE" in params:
            size = params["SIZE"]
            if size is None or not size.isdigit() or len(size) > 20:
                raise ReplyError(_syntax("Bad SIZE parameter"))
            limit = self.settings.maxMessageSize
            if limit and int(size) > limit:
                raise ReplyError(TOO_BIG)
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

        self._hooks.now(
            lambda: self._hooks.callReply("RCPT", (recipient, params), answered)
        )

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        if arg:
            self._write(_syntax("Syntax: DATA"))
        elif transaction is None:
            self._write(_sequence("Need MAIL command"))
        elif not transaction.recipients:
            self._write(_sequence("Need RCPT (recipient)"))
        else:
            self._hooks.now(
                lambda: self._hooks.callReply("DATA", (), self._dataAnswered)
            )

    def _dataAnswered(self, reply: Reply) -> None:
        if reply.code // 100 == 3:
            self._beginMessage()
        self._write(reply)

    def do_RSET(self, arg: str) -> None:
        if arg:
            self._write(_syntax("Syntax: RSET"))
            return
        self._hooks.now(
            self._abortStep, lambda: self._hooks.callReply("RSET", (), self._write)
        )

    def do_NOOP(self, arg: str) -> None:
        self._hooks.now(lambda: self._hooks.callReply("NOOP", (), self._write))

    def do_VRFY(self, arg: str) -> None:
        self._addressQuery("VRFY", arg)

    def do_EXPN(self, arg: str) -> None:
        self._addressQuery("EXPN", arg)

    def _addressQuery(self, verb: str, arg: str) -> None:
        if not arg:
            self._write(_syntax(f"{verb} requires an address"))
            return
        self._hooks.now(lambda: self._hooks.callReply(verb, (arg,), self._write))

    def do_HELP(self, arg: str) -> None:
        topic = arg or None
        self._hooks.now(lambda: self._hooks.callReply("HELP", (topic,), self._write))

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
