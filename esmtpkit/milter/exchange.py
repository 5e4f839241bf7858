"""
L{MilterExchange}: the MTA side of a milter connection, one command and its
reply at a time.

It keeps the command waiting for its reply, with its timer (a progress
report starts it again); reads the milter's packets, collecting the changes
it asks at the end of a message (a replacement body in a spool file) until
its final reply; tells a sender when the socket takes more data
(L{_WriteFlow}); and ends the connection for good after a timeout, a
protocol error or a cancelled command, failing what waits. What the
commands are, and the negotiation, are L{MilterClient
<esmtpkit.milter.client.MilterClient>}'s.
"""

from __future__ import annotations

import socket
import tempfile
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .answers import decodeReply

__all__ = ["MilterExchange", "MilterTimeout", "MilterUnavailable"]

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 0)
# A milter's replacement body is kept in memory up to this size, then on disk.
_IN_MEMORY = 1024 * 1024
_ACTION_OF = {
    wire.ADDHEADER: wire.SMFIF_ADDHDRS,
    wire.INSHEADER: wire.SMFIF_ADDHDRS,
    wire.CHGHEADER: wire.SMFIF_CHGHDRS,
    wire.REPLBODY: wire.SMFIF_CHGBODY,
    wire.ADDRCPT: wire.SMFIF_ADDRCPT,
    wire.ADDRCPT_PAR: wire.SMFIF_ADDRCPT_PAR,
    wire.DELRCPT: wire.SMFIF_DELRCPT,
    wire.CHGFROM: wire.SMFIF_CHGFROM,
    wire.QUARANTINE: wire.SMFIF_QUARANTINE,
}
_NAMES = {
    wire.CONNECT: "connect",
    wire.HELO: "helo",
    wire.MAIL: "mail",
    wire.RCPT: "rcpt",
    wire.DATA: "data",
    wire.HEADER: "header",
    wire.EOH: "end of headers",
    wire.BODY: "body",
    wire.BODYEOB: "end of message",
    wire.UNKNOWN: "unknown command",
    wire.OPTNEG: "negotiation",
}


class MilterUnavailable(Exception):
    """
    The milter could not be reached, or its connection is gone.
    """


class MilterTimeout(Exception):
    """
    The milter did not answer in time.
    """


@implementer(IPushProducer)
class _WriteFlow:
    """
    Whether the milter's socket takes more data (the transport pauses and
    resumes this producer as its write buffer fills and drains).
    """

    def __init__(self) -> None:
        self.paused = False
        self.waiting: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, []
        for deferred in waiting:
            deferred.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def drained(self) -> Deferred[None]:
        if not self.paused:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self.waiting.append(deferred)
        return deferred


class MilterExchange(Protocol):
    """
    One connection to a milter: commands sent one at a time, each waiting
    for its reply (L{_expect}).

    @ivar ready: fires once the connection is ready for commands, or fails
        (the milter closed, timed out or answered nonsense).
    @ivar actions: the actions (C{SMFIF_*}) the milter may take.
    @ivar broken: the failure that ended this connection, or L{None}.
    @ivar name: the milter's name for the log (its address).
    """

    log = Logger()
    # A TCP or unix transport (abortConnection, registerProducer).
    transport: Any

    def __init__(self, clock: IReactorTime, name: str = "milter") -> None:
        self.clock = clock
        self.name = name
        self.ready: Deferred[Any] = Deferred()
        self.actions = 0
        self.broken: Failure | None = None
        self._reader = wire.PacketReader()
        self._pending: tuple[bytes, Deferred[Any]] | None = None
        self._timer: IDelayedCall | None = None
        self._timeout = 0.0
        self._edits: list[tuple[bytes, bytes]] = []
        self._body: IO[bytes] | None = None
        self._flow = _WriteFlow()
        self._closing = False
        self._socket: socket.socket | None = None

    # -- the connection ---------------------------------------------------

    def connectionMade(self) -> None:
        # One small packet, then a wait for the reply: Nagle's algorithm
        # would hold a packet back for the ACK of the one before.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
            handle = getattr(self.transport, "getHandle", lambda: None)()
            if _TCP_QUICKACK and isinstance(handle, socket.socket):
                self._socket = handle
        self.transport.registerProducer(self._flow, True)

    def dataReceived(self, data: bytes) -> None:
        self._quickAck()
        try:
            for command, body in self._reader.feed(data):
                self._packet(command, body)
                if self.broken is not None:
                    return
        except wire.MilterProtocolError as e:
            self._breakProtocol(str(e))

    def _quickAck(self) -> None:
        # libmilter writes the changes and the final reply of the end of a
        # message as separate small packets, and leaves Nagle's algorithm
        # on: the final reply waits for our ACK of the changes, which
        # Linux delays up to 40 ms. Acknowledging at once (TCP_QUICKACK,
        # which lasts only until the next delayed ACK, so it is set again
        # on every read) takes that wait away.
        if self._socket is None:
            return
        try:
            self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            self._socket = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._flow.stopProducing()
        if self.broken is None:
            gone = "closed" if self._closing else "closed the connection"
            self.broken = Failure(MilterUnavailable(f"milter {self.name} {gone}"))
        self._failPending(self.broken)
        if not self.ready.called:
            self.ready.errback(self.broken)

    def close(self) -> None:
        """
        Say goodbye (QUIT) and close the connection.
        """
        if self.transport is None or self._closing:
            return
        self._closing = True
        if self.broken is None:
            self.transport.write(wire.packet(wire.QUIT))
        self.transport.loseConnection()

    # -- replies ----------------------------------------------------------

    def _packet(self, command: bytes, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._breakProtocol(f"unexpected reply {command!r} with nothing asked")
            return
        asked, deferred = pending
        if asked == wire.OPTNEG:
            if command != wire.OPTNEG:
                self._breakProtocol(f"reply {command!r} to negotiation")
                return
            self._answered(data)
            return
        if command == wire.PROGRESS:
            if self._timer is not None and self._timer.active():
                self._timer.reset(self._timeout)
            return
        if command in wire.MODIFICATIONS:
            if asked != wire.BODYEOB:
                self._breakProtocol(f"modification {command!r} before end of message")
                return
            if not self.actions & _ACTION_OF[command]:
                self._breakProtocol(f"modification {command!r} not negotiated")
                return
            if command == wire.REPLBODY:
                # A replacement body can be as long as the message: it goes
                # to a spool file (in memory while small), not a list.
                if self._body is None:
                    self._body = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)
                    self._edits.append((command, self._body))  # type: ignore[arg-type]
                self._body.write(data)
                return
            self._edits.append((command, data))
            return
        if command not in wire.FINAL_REPLIES:
            self._breakProtocol(f"unknown reply {command!r}")
            return
        if self._body is not None:
            self._body.seek(0)
            self._body = None
        try:
            reply = decodeReply(command, data, self._edits)
        except wire.MilterProtocolError as e:
            self._breakProtocol(str(e))
            return
        self._edits = []
        self._answered(reply)

    def _answered(self, value: Any) -> None:
        assert self._pending is not None
        deferred = self._pending[1]
        self._pending = None
        self._stopTimer()
        deferred.callback(value)

    def _expect(self, command: bytes, timeout: float) -> Deferred[Any]:
        assert self._pending is None, "a milter command is already waiting"
        deferred: Deferred[Any] = Deferred(lambda d: self._cancelled())
        self._pending = (command, deferred)
        self._timeout = timeout
        if timeout:
            self._timer = self.clock.callLater(timeout, self._timedOut)
        return deferred

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        assert self._pending is not None
        what = _NAMES.get(self._pending[0], repr(self._pending[0]))
        self._break(
            MilterTimeout(
                f"milter {self.name}: no reply to {what} in {self._timeout:g}s"
            )
        )

    def _cancelled(self) -> None:
        # The hook waiting for this reply was given up: the conversation
        # with the milter is out of step.
        self._pending = None
        self._break(MilterUnavailable(f"milter {self.name}: command cancelled"))

    def _breakProtocol(self, problem: str) -> None:
        self._break(wire.MilterProtocolError(f"milter {self.name}: {problem}"))

    def _break(self, error: Exception) -> None:
        if self.broken is not None:
            return
        self.log.warn("{error}", error=error)
        self.broken = Failure(error)
        self._stopTimer()
        self._failPending(self.broken)
        if not self.ready.called:
            self.ready.errback(self.broken)
        if self.transport is not None:
            self.transport.abortConnection()

    def _failPending(self, failure: Failure) -> None:
        self._stopTimer()
        pending, self._pending = self._pending, None
        self._edits = []
        if self._body is not None:
            self._body.close()
            self._body = None
        if pending is not None:
            pending[1].errback(failure)
