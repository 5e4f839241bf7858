"""
L{ReplyingConnection}: the state of one connection of an SMTP-like wire
(SMTP, LMTP) and what goes back to its client: the replies, the end of a
message and of a BDAT chunk, the error budget, the 421s of the protections,
the graceful drain, and the close.

L{SMTPConnection <esmtpkit.smtp.connection.SMTPConnection>} builds on it
with the connection's life cycle, input and flow control.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.conversation import Conversation
from ..io.writer import ReplyWriter
from ..reply import Reply
from ..session import Session
from .lines import PushbackLineReceiver

if TYPE_CHECKING:
    from ..server.context import ServerContext
    from .reader import Reader

__all__ = ["ReplyingConnection", "GREETING", "COMMAND", "REFUSED"]

# The phases of a connection (ReplyingConnection._state); what input means
# within a phase is the reader's business.
GREETING = 0  # the greeting has not been sent yet
COMMAND = 1  # serving commands
REFUSED = 2  # CONNECT answered 554: only QUIT is served

_SHUTTING_DOWN_TEXT = "Service shutting down"
_SYNC = Reply(554, "Error: SMTP protocol synchronization", enhanced="5.5.0")
# The commands whose argument a refusal event carries (a path or a domain;
# never AUTH's, which can hold a secret).
_ARGUMENT_TOLD = frozenset({"MAIL", "RCPT", "HELO", "EHLO", "LHLO"})


class ReplyingConnection(PushbackLineReceiver):
    """
    The state of one server connection of an SMTP-like wire, and its
    replies.

    @ivar session: the connection's L{Session}.
    @ivar conversation: the L{Conversation} with the handler.
    @ivar settings: the server's L{Settings <esmtpkit.Settings>}.
    @ivar verb: the command being answered (for the events).
    @ivar argument: the text after the verb of the command being answered
        (for the events).
    @ivar writer: the connection's L{ReplyWriter} (made when the connection
        is).
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
        "_secure",
        "_errors",
        "_draining",
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
        self._secure: Any = None  # STARTTLS/AUTH state, made when first needed
        self._errors = 0
        self._draining = False  # see drain()

    @property
    def handler(self) -> Any:
        """
        The connection's handler, or L{None} if it has none (a connection
        refused for a limit, or a handler factory that failed).
        """
        return self.conversation.handler

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

    def violation(self, what: str) -> None:
        """
        The client broke the rules of the conversation in a way that makes
        it unsafe to go on: say so and close.
        """
        self.limitReached("sync", f"protocol violation: {what}")
        self.writeReply(_SYNC, count=False)
        self.close()

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
        enhanced = enhanced and self.settings.enhancedStatusCodes
        # Reply.toBytes, its cache read inline (every reply comes here).
        wire = reply._wire[1 if enhanced else 0]
        self.writer.write(wire if wire is not None else reply.toBytes(enhanced))
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
