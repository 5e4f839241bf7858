"""
The milter server face: any L{IESMTPHandler <esmtpkit.IESMTPHandler>}
served as a milter to Postfix or Sendmail.

One L{MilterConnection} per connection from the MTA (one per SMTP session
of its client, or several in a row after C{K}) drives the same
L{Conversation} as the SMTP face: CONNECT greets, HELO starts the session,
MAIL, RCPT and DATA are the commands, HEADER, EOH and BODY go through the
L{Content} pipeline, end of body is EOM; C{A} aborts the message (ABORT),
C{Q}, C{K} and a lost connection close the conversation (ABORT if needed,
then DISCONNECT). The session (a L{MilterSession}) is filled from the
MTA's events and macros.

Packets are handled one at a time: while a hook is pending the face reads
nothing more (the MTA waits for the reply anyway, or its no-reply events
wait in the socket), so replies go out in order, exactly one per command
that wants one, and none to C{A}, C{D}, C{Q}, C{K} or to events negotiated
as no-reply. While a reply is owed and a hook takes long, SMFIR_PROGRESS
goes out every L{PROGRESS_INTERVAL} seconds so that the MTA's timer does
not fire. A packet that breaks the protocol closes that connection with
one log line; the server goes on.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.content import Content
from ..core.conversation import Conversation
from ..reply import Reply
from . import wire
from .macros import MilterSession, daemonAddress, parseArguments, parseConnect
from .message import MessageSteps
from .negotiate import Negotiated, negotiate, overridden
from .replies import verdict

if TYPE_CHECKING:
    from ..server.context import ServerContext

__all__ = ["MilterConnection", "PROGRESS_INTERVAL"]

log = Logger(namespace="esmtpkit")

PROGRESS_INTERVAL = 10.0
"""
Seconds between SMFIR_PROGRESS packets while a hook keeps a reply waiting
(Postfix's milter_command_timeout is 30 s by default).
"""

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
_HELD_HOOK = 1  # a hook is pending
_HELD_CLOSE = 2  # the conversation before a K is closing

_PROGRESS = wire.packet(wire.PROGRESS)

# The verbs of the events, by command.
_VERBS = {
    wire.CONNECT: "CONNECT",
    wire.HELO: "HELO",
    wire.MAIL: "MAIL",
    wire.RCPT: "RCPT",
    wire.DATA: "DATA",
    wire.HEADER: "HEADER",
    wire.EOH: "EOH",
    wire.BODY: "BODY",
    wire.BODYEOB: "EOM",
    wire.UNKNOWN: "UNKNOWN",
}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class MilterConnection(MessageSteps, Protocol):
    """
    One connection from the MTA.

    @ivar session: the L{MilterSession} of the MTA's client.
    @ivar conversation: the L{Conversation} with the handler.
    @ivar negotiated: what was agreed (L{Negotiated}), once negotiated.
    """

    def __init__(self, server: ServerContext, progressInterval: float) -> None:
        self.server = server
        self.settings = server.settings
        self.progressInterval = progressInterval
        self.negotiated: Negotiated | None = None
        self.session: MilterSession = None  # type: ignore[assignment]
        self.conversation: Conversation = None  # type: ignore[assignment]
        self._reader = wire.PacketReader()
        self._input = bytearray()
        self._content: Content | None = None
        self._connected = False  # CONNECT seen in this conversation
        self._owed: bytes | None = None  # the command waiting for its reply
        self._argument = ""  # HELO's domain, MAIL's or RCPT's path
        self._held = 0
        self._processing = False
        self._closing = False
        self._draining = False
        self._progress: IDelayedCall | None = None
        self._quickAck: Any = None  # the socket, where quick ACKs are on

    @property
    def handler(self) -> Any:
        """
        The handler of the current conversation.
        """
        return self.conversation.handler

    # -- life cycle ---------------------------------------------------------

    def connectionMade(self) -> None:
        server = self.server
        self._newConversation()
        refusal = server.limits.opened(self)
        if refusal is not None:
            limit, reply = refusal
            for notify in server.events.connectionRefused:
                notify(self.session, limit, reply)
            self._closing = True
            self.transport.loseConnection()
            return
        if not self.conversation.start(server.handlerFactory, self):
            self._closing = True
            self.transport.loseConnection()
            return
        if ITCPTransport.providedBy(self.transport):
            # A reply is one write; Nagle's algorithm would hold it back
            # until the MTA's delayed ACK.
            self.transport.setTcpNoDelay(True)
            if _QUICKACK is not None:
                # The MTA writes each event on its own (Postfix: with Nagle
                # on), and most get no reply to carry our ACK: a delayed ACK
                # would hold its next event back 40 ms. Acknowledge at once
                # (the kernel forgets this after a while: renewed per read).
                self._quickAck = getattr(self.transport, "getHandle", lambda: None)()
                self._ackNow()

    def _newConversation(self) -> None:
        transport = self.transport
        session = MilterSession(hostname=self.settings.hostname)
        session.peer = transport.getPeer()
        session.host = self.server.limits.sharedAddress(transport.getHost())
        self.session = session
        self.conversation = Conversation(
            session, self.settings, self.server.clock, self.server.events
        )
        self._content = None
        self._connected = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._stopProgress()
        limits = self.server.limits
        limits.closed(self)
        self.conversation.close(lambda: limits.ended(self))

    def drain(self) -> None:
        """
        The server shuts down: close as soon as no message is under way
        (the MTA then applies its milter_default_action to what follows).
        """
        self._draining = True
        self._closeIfIdle()

    def shutdown(self) -> None:
        """
        The shutdown deadline: close now; the hook in flight is cancelled.
        """
        self._draining = True
        self.conversation.interrupt()
        self._close()

    def _closeIfIdle(self) -> None:
        hooks = self.conversation.hooks
        if (
            self._draining
            and self.session.transaction is None
            and self._owed is None
            and (hooks is None or hooks.pending is None)
        ):
            self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()

    def _protocolError(self, problem: str) -> None:
        """
        The MTA broke the protocol: one log line, and this connection ends.
        """
        for notify in self.server.events.limitReached:
            notify(self.session, "sync", f"milter protocol error: {problem}")
        if not self._closing:
            self._closing = True
            abort = getattr(self.transport, "abortConnection", None)
            (abort or self.transport.loseConnection)()

    # -- flow control (the HookFlow of the conversation) --------------------

    def hookPending(self) -> None:
        self._hold(_HELD_HOOK)
        if self._owed is not None and self._progress is None:
            self._progress = self.server.clock.callLater(
                self.progressInterval, self._sendProgress
            )

    def hooksDone(self) -> None:
        self._release(_HELD_HOOK)

    def _hold(self, reason: int) -> None:
        if not self._held and not self._closing:
            self.transport.pauseProducing()
        self._held |= reason

    def _release(self, reason: int) -> None:
        if not self._held & reason:
            return
        self._held &= ~reason
        if self._held or self._closing:
            return
        self.transport.resumeProducing()
        if self._draining:
            self._closeIfIdle()
        self._process()

    def _sendProgress(self) -> None:
        self._progress = None
        if self._owed is not None and not self._closing:
            self.transport.write(_PROGRESS)
            self._progress = self.server.clock.callLater(
                self.progressInterval, self._sendProgress
            )

    def _stopProgress(self) -> None:
        if self._progress is not None:
            if self._progress.active():
                self._progress.cancel()
            self._progress = None

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._quickAck is not None:
            self._ackNow()
        self._input += data
        self._process()

    def _ackNow(self) -> None:
        try:
            self._quickAck.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            self._quickAck = None

    def _process(self) -> None:
        if self._processing or self._held or self._closing:
            return
        self._processing = True
        data = bytes(self._input)
        del self._input[:]
        try:
            for command, payload in self._reader.feed(data):
                self._packet(command, payload)
                hooks = self.conversation.hooks
                if hooks is not None and (hooks.steps or hooks.holding):
                    hooks.drive()
                if self._held or self._closing:
                    break
        except wire.MilterProtocolError as e:
            self._protocolError(str(e))
        except (ValueError, struct.error, IndexError) as e:
            self._protocolError(f"{type(e).__name__}: {e}")
        except Exception:
            log.failure(
                "milter connection of session {session} failed", session=self.session.id
            )
            self._protocolError("internal error")
        finally:
            self._processing = False

    def _packet(self, command: bytes, data: bytes) -> None:
        name = _DISPATCH.get(command)
        if name is None:
            raise wire.MilterProtocolError(f"unknown command {command!r}")
        negotiated = self.negotiated
        if negotiated is None:
            if command != wire.OPTNEG:
                raise wire.MilterProtocolError(
                    f"command {command!r} before option negotiation"
                )
        elif negotiated.replies(command) and command != wire.OPTNEG:
            if self._owed is not None:
                raise wire.MilterProtocolError(
                    f"command {command!r} while the reply to {self._owed!r} is due"
                )
            self._owed = command
        getattr(self, name)(data)

    # -- replies --------------------------------------------------------------

    def _answer(self, reply: Reply, end: bool = False) -> None:
        """
        Answer the command that waits for its reply with C{reply} (nothing
        is sent if no command waits: a no-reply event).
        """
        command = self._owed
        if command is None or self._closing:
            return
        handler = self.conversation.handler
        disconnect = handler is not None and handler.disconnect
        self._write(verdict(reply, disconnect, end))
        events = self.server.events
        if events.commandReplied:
            for notify in events.commandReplied:
                notify(self.session, _VERBS.get(command, "UNKNOWN"), reply)
        if reply.code >= 400 and events.commandRefused:
            verb = _VERBS.get(command, "UNKNOWN")
            argument = (
                self._argument if verb in ("MAIL", "RCPT", "HELO", "EHLO") else ""
            )
            for notify in events.commandRefused:
                notify(self.session, verb, argument, reply)

    def _write(self, packet: bytes) -> None:
        self._owed = None
        self._stopProgress()
        self.transport.write(packet)

    # -- commands -------------------------------------------------------------

    def _optneg(self, data: bytes) -> None:
        version, actions, protocol, _ = wire.decodeNegotiation(data)
        handler = self.conversation.handler
        self.negotiated = negotiate(type(handler), version, actions, protocol)
        self.transport.write(self.negotiated.packet())

    def _macro(self, data: bytes) -> None:
        command, values = wire.decodeMacros(data)
        self.session.macros.define(command, values)

    def _connect(self, data: bytes) -> None:
        if self._connected:
            raise wire.MilterProtocolError("a second CONNECT without QUIT_NC")
        name, peer = parseConnect(data)
        session = self.session
        session.peerName = name
        if peer is not None:
            session.peer = peer
        self._opened()
        self.conversation.greet(self._answer)

    def _opened(self) -> None:
        """
        The MTA's client is known: the session starts.
        """
        if self._connected:
            return
        self._connected = True
        session = self.session
        macros = session.macros
        hostname = macros.get("j")
        if hostname:
            session.hostname = hostname
        host = daemonAddress(macros)
        if host is not None:
            session.host = host
        session.learn()
        for notify in self.server.events.connectionOpened:
            notify(session)

    def _helo(self, data: bytes) -> None:
        (domain,) = wire.splitStrings(data, 1)
        self._opened()
        self.session.learn()
        handlerClass = type(self.conversation.handler)
        plain = overridden(handlerClass, "HELO") and not overridden(
            handlerClass, "EHLO"
        )
        hook = "HELO" if plain else "EHLO"
        self._argument = _text(domain)
        self.conversation.hello(hook, self._argument, not plain, self._answer)

    def _mail(self, data: bytes) -> None:
        sender, params = parseArguments(data)
        self._opened()
        session = self.session
        session.macros.forgetMessage(keep=wire.MAIL)
        session.learn()
        self._content = None
        conversation = self.conversation
        if session.transaction is not None:
            conversation.hooks.run(conversation.abortStep)
        self._argument = f"FROM:<{sender}>"  # for the refusal event
        conversation.mail(sender, params, self._answer)

    def _rcpt(self, data: bytes) -> None:
        recipient, params = parseArguments(data)
        if self.session.transaction is None:
            raise wire.MilterProtocolError("RCPT without a transaction")
        self.session.learn()
        self._argument = f"TO:<{recipient}>"  # for the refusal event
        self.conversation.rcpt(recipient, params, self._answer)

    def _data(self, data: bytes) -> None:
        if self.session.transaction is None:
            raise wire.MilterProtocolError("DATA without a transaction")
        self.session.learn()
        self.conversation.data(self._answer)

    def _unknown(self, data: bytes) -> None:
        (line,) = wire.splitStrings(data, 1)
        self._opened()
        self.conversation.command("UNKNOWN", (_text(line),), self._answer)

    def _abort(self, data: bytes) -> None:
        self._content = None
        self.session.macros.forgetMessage()
        self.conversation.hooks.run(self.conversation.abortStep)
        if self._draining:
            self.conversation.hooks.later(self._closeIfIdle)

    def _quit(self, data: bytes) -> None:
        self._close()

    def _quitNewConnection(self, data: bytes) -> None:
        """
        C{K}: this client's session is over, another one follows on the
        same connection with a new handler.
        """
        self._hold(_HELD_CLOSE)
        self.conversation.close(self._reopen)

    def _reopen(self) -> None:
        if self._closing:
            # Lost while the conversation closed: its close, asked again by
            # connectionLost, was this one.
            self.server.limits.ended(self)
            return
        self._newConversation()
        if not self.conversation.start(self.server.handlerFactory, self):
            self._close()
            return
        self._release(_HELD_CLOSE)


_DISPATCH = {
    wire.OPTNEG: "_optneg",
    wire.MACRO: "_macro",
    wire.CONNECT: "_connect",
    wire.HELO: "_helo",
    wire.MAIL: "_mail",
    wire.RCPT: "_rcpt",
    wire.DATA: "_data",
    wire.HEADER: "_header",
    wire.EOH: "_eoh",
    wire.BODY: "_body",
    wire.BODYEOB: "_endOfBody",
    wire.ABORT: "_abort",
    wire.QUIT: "_quit",
    wire.QUIT_NC: "_quitNewConnection",
    wire.UNKNOWN: "_unknown",
}
