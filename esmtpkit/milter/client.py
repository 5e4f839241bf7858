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

The waiting for each reply (its timer, the changes collected before it, the
end of the connection after a failure) is L{MilterExchange
<esmtpkit.milter.exchange.MilterExchange>}'s; this module is what the
client offers, the negotiation, and the commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from . import wire
from .answers import MilterReply
from .exchange import MilterExchange, MilterTimeout, MilterUnavailable

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

_STAGE_OF = {command: stage for stage, command in wire.STAGE_COMMANDS.items()}
_CONTINUE = MilterReply(wire.CONTINUE)


class MilterClient(MilterExchange):
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

    ready: Deferred[MilterClient]

    def __init__(
        self,
        clock: IReactorTime,
        commandTimeout: float = 30.0,
        contentTimeout: float = 300.0,
        name: str = "milter",
        offeredActions: int = OFFERED_ACTIONS,
        offeredProtocol: int = OFFERED_PROTOCOL,
    ) -> None:
        super().__init__(clock, name)
        self.commandTimeout = commandTimeout
        self.contentTimeout = contentTimeout
        self.offeredActions = offeredActions
        self.offeredProtocol = offeredProtocol
        self.version = wire.VERSION
        self.protocol = 0
        self.macroNames: dict[int, Sequence[str]] = dict(DEFAULT_MACROS)

    # -- negotiation ------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
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
