"""
L{MilterClient}: esmtpkit as the MTA side of one milter connection.

The client speaks the protocol of Sendmail's libmilter (version 6, and any
older version 2 to 5 the milter answers with): it offers every action and
protocol step it can handle, keeps what the milter chose, and sends each
command with the macros the milter wishes for at that stage. A command the
milter switched off (C{SMFIP_NO*}) is not sent; one it does not answer
(C{SMFIP_NR_*}) is sent and answered C{continue} at once. Every other
command returns a L{Deferred} that fires with the milter's L{MilterReply},
or fails with L{MilterUnavailable}, L{MilterTimeout} or
L{MilterProtocolError}; after any failure the connection is closed and
every later command fails at once.

The milter answers one command at a time, so the client sends the next
command only after the reply to the previous one: L{MilterFilter
<esmtpkit.milter.filter.MilterFilter>} calls it from the hooks, which
esmtpkit runs one at a time.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .answers import MilterReply, decodeReply

__all__ = [
    "MilterClient",
    "MilterReply",
    "MilterTimeout",
    "MilterUnavailable",
    "OFFERED_ACTIONS",
    "OFFERED_PROTOCOL",
    "DEFAULT_MACROS",
]

#: The actions esmtpkit lets a milter take (all of them; the changes are
#: recorded on C{transaction.modifications}).
OFFERED_ACTIONS = wire.SMFIF_ALL
#: The protocol steps a milter may switch off or leave unanswered, SKIP and
#: header values with their leading space. Not offered: rejected recipients
#: (C{SMFIP_RCPT_REJ}) and body chunks over 65,535 octets.
OFFERED_PROTOCOL = (
    wire.SMFIP_NOCONNECT
    | wire.SMFIP_NOHELO
    | wire.SMFIP_NOMAIL
    | wire.SMFIP_NORCPT
    | wire.SMFIP_NOBODY
    | wire.SMFIP_NOHDRS
    | wire.SMFIP_NOEOH
    | wire.SMFIP_NR_HDR
    | wire.SMFIP_NOUNKNOWN
    | wire.SMFIP_NODATA
    | wire.SMFIP_SKIP
    | wire.SMFIP_NR_CONN
    | wire.SMFIP_NR_HELO
    | wire.SMFIP_NR_MAIL
    | wire.SMFIP_NR_RCPT
    | wire.SMFIP_NR_DATA
    | wire.SMFIP_NR_UNKN
    | wire.SMFIP_NR_EOH
    | wire.SMFIP_NR_BODY
    | wire.SMFIP_HDR_LEADSPC
)

#: The macros sent at each stage unless the milter wishes for others
#: (Postfix's C{milter_*_macros} defaults, with the client's address, name
#: and port at connect).
DEFAULT_MACROS: dict[int, tuple[str, ...]] = {
    wire.SMFIM_CONNECT: (
        "j",
        "{daemon_name}",
        "{daemon_addr}",
        "v",
        "_",
        "{client_addr}",
        "{client_name}",
        "{client_port}",
    ),
    wire.SMFIM_HELO: (
        "{tls_version}",
        "{cipher}",
        "{cipher_bits}",
        "{cert_subject}",
        "{cert_issuer}",
    ),
    wire.SMFIM_ENVFROM: (
        "i",
        "{auth_type}",
        "{auth_authen}",
        "{auth_author}",
        "{mail_addr}",
        "{mail_host}",
        "{mail_mailer}",
    ),
    wire.SMFIM_ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    wire.SMFIM_DATA: ("i",),
    wire.SMFIM_EOH: ("i",),
    wire.SMFIM_EOM: ("i",),
}

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
_STAGE_OF = {command: stage for stage, command in wire.STAGE_COMMANDS.items()}
_CONTINUE = MilterReply(wire.CONTINUE)
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


class MilterClient(Protocol):
    """
    One connection to a milter.

    @ivar ready: fires with this client once the options are negotiated, or
        fails (the milter closed, timed out or answered nonsense).
    @ivar version: the protocol version in force (the milter's, 2 to 6).
    @ivar actions: the actions (C{SMFIF_*}) the milter asked for.
    @ivar protocol: the protocol flags (C{SMFIP_*}) in force.
    @ivar macroNames: the macro names to send at each stage (C{SMFIM_*}).
    @ivar broken: the failure that ended this connection, or L{None}.
    @ivar name: the milter's name for the log (its address).
    """

    log = Logger()
    # A TCP or unix transport (abortConnection, registerProducer).
    transport: Any

    def __init__(
        self,
        clock: IReactorTime,
        commandTimeout: float = 30.0,
        contentTimeout: float = 300.0,
        name: str = "milter",
        offeredActions: int = OFFERED_ACTIONS,
        offeredProtocol: int = OFFERED_PROTOCOL,
    ) -> None:
        self.clock = clock
        self.commandTimeout = commandTimeout
        self.contentTimeout = contentTimeout
        self.name = name
        self.offeredActions = offeredActions
        self.offeredProtocol = offeredProtocol
        self.ready: Deferred[MilterClient] = Deferred()
        self.version = wire.VERSION
        self.actions = 0
        self.protocol = 0
        self.macroNames: dict[int, Sequence[str]] = dict(DEFAULT_MACROS)
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
        data = wire.encodeNegotiation(
            wire.VERSION, self.offeredActions, self.offeredProtocol
        )
        deferred = self._expect(wire.OPTNEG, self.commandTimeout)
        self.transport.write(wire.packet(wire.OPTNEG, data))
        deferred.addCallbacks(self._negotiated, self._notReady)

    def _negotiated(self, data: bytes) -> None:
        try:
            version, actions, protocol, macros = wire.decodeNegotiation(data)
        except wire.MilterProtocolError as e:
            self._breakProtocol(str(e))
            return
        if not wire.MIN_VERSION <= version <= wire.VERSION:
            self._breakProtocol(f"protocol version {version} (2 to 6 spoken)")
            return
        self.version = version
        asked = (
            protocol
            & ~self.offeredProtocol
            & ~(wire.SMFIP_MDS_256K | wire.SMFIP_MDS_1M)
        )
        if asked:
            self.log.info(
                "milter {name}: protocol flags {flags:#x} not offered, ignored",
                name=self.name,
                flags=asked,
            )
        self.actions = actions & self.offeredActions
        self.protocol = protocol & self.offeredProtocol
        for stage, names in macros.items():
            if stage in wire.STAGE_COMMANDS:
                self.macroNames[stage] = tuple(names)
        self.ready.callback(self)

    def _notReady(self, failure: Failure) -> None:
        self.ready.errback(failure)

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

    # -- commands ---------------------------------------------------------

    def wants(self, command: bytes) -> bool:
        """
        Whether the milter takes C{command} at all (not switched off by a
        C{SMFIP_NO*} flag, and known to its protocol version).
        """
        if command == wire.DATA and self.version < 4:
            return False
        if command == wire.UNKNOWN and self.version < 3:
            return False
        flags = wire.STEP_FLAGS.get(command)
        return flags is None or not self.protocol & flags[0]

    def send(
        self,
        command: bytes,
        data: bytes = b"",
        macros: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Deferred[MilterReply]:
        """
        Send C{command} (after the macros of its stage that C{macros}
        knows) and wait for the milter's reply.

        @param macros: macro values known now, by name (C{"j"},
            C{"{client_addr}"}); only those the milter wants at this stage
            are sent.
        @param timeout: seconds to wait for the reply (default: the content
            timeout for headers, body and end of message, else the command
            timeout); a progress report starts it again.
        @return: a Deferred firing with the L{MilterReply}; C{continue} at
            once for a command the milter switched off or does not answer.
        """
        if self.broken is not None:
            return fail(self.broken)
        if not self.wants(command):
            return succeed(_CONTINUE)
        transport = self.transport
        stage = _STAGE_OF.get(command)
        if macros and stage is not None:
            chosen = {
                name: macros[name]
                for name in self.macroNames.get(stage, ())
                if macros.get(name) is not None
            }
            if chosen:
                transport.write(
                    wire.packet(wire.MACRO, wire.encodeMacros(command, chosen))
                )
        flags = wire.STEP_FLAGS.get(command)
        noReply = flags is not None and bool(self.protocol & flags[1])
        if noReply:
            transport.write(wire.packet(command, data))
            return self._flow.drained().addCallback(lambda _: _CONTINUE)
        if timeout is None:
            content = command in (wire.HEADER, wire.EOH, wire.BODY, wire.BODYEOB)
            timeout = self.contentTimeout if content else self.commandTimeout
        deferred = self._expect(command, timeout)
        transport.write(wire.packet(command, data))
        return deferred

    def abort(self) -> None:
        """
        End the current message (SMFIC_ABORT; no reply).
        """
        if self.broken is None and self.transport is not None:
            self.transport.write(wire.packet(wire.ABORT))

    # The commands by name, their data encoded as the protocol wants.

    def connect(
        self,
        hostname: str,
        family: bytes,
        port: int,
        address: str,
        macros: Mapping[str, str] | None = None,
    ) -> Deferred[MilterReply]:
        """
        The client connected from C{address} (family C{wire.FAMILY_*}).
        """
        data = wire.strings(hostname) + family
        if family != wire.FAMILY_UNKNOWN:
            data += port.to_bytes(2, "big") + wire.strings(address)
        return self.send(wire.CONNECT, data, macros)

    def helo(self, name: str, macros: Mapping[str, str] | None = None) -> Deferred[Any]:
        return self.send(wire.HELO, wire.strings(name), macros)

    def mail(
        self, sender: str, args: Sequence[str], macros: Mapping[str, str] | None = None
    ) -> Deferred[MilterReply]:
        return self.send(wire.MAIL, wire.strings(f"<{sender}>", *args), macros)

    def rcpt(
        self,
        recipient: str,
        args: Sequence[str],
        macros: Mapping[str, str] | None = None,
    ) -> Deferred[MilterReply]:
        return self.send(wire.RCPT, wire.strings(f"<{recipient}>", *args), macros)

    def data(self, macros: Mapping[str, str] | None = None) -> Deferred[MilterReply]:
        return self.send(wire.DATA, b"", macros)

    def header(self, name: bytes, value: bytes) -> Deferred[MilterReply]:
        """
        One header field: C{value} as the milter wants it (see
        L{esmtpkit.milter.headers}).
        """
        return self.send(wire.HEADER, wire.strings(name, value))

    def endOfHeaders(
        self, macros: Mapping[str, str] | None = None
    ) -> Deferred[MilterReply]:
        return self.send(wire.EOH, b"", macros)

    def body(self, chunk: bytes) -> Deferred[MilterReply]:
        """
        A body chunk of at most L{wire.MAX_BODY_CHUNK} octets.
        """
        if len(chunk) > wire.MAX_BODY_CHUNK:
            raise ValueError(f"body chunk of {len(chunk)} octets")
        return self.send(wire.BODY, chunk)

    def endOfMessage(
        self, macros: Mapping[str, str] | None = None
    ) -> Deferred[MilterReply]:
        """
        The end of the message: the reply carries the milter's changes
        (L{MilterReply.edits}).
        """
        return self.send(wire.BODYEOB, b"", macros)

    def unknown(self, line: str) -> Deferred[MilterReply]:
        return self.send(wire.UNKNOWN, wire.strings(line))
