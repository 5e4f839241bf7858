"""
The milter face's session: L{MilterSession} (a L{Session} with the MTA's
macros and the client's host name), L{Macros} (kept per stage), and the
parsing of the events that fill them: the client's address (CONNECT), the
ESMTP parameters of MAIL and RCPT.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from ..session import Params, Session, TLSInfo, Transaction
from ..smtp.params import xtextDecode
from . import wire

__all__ = [
    "Macros",
    "MilterSession",
    "parseConnect",
    "parseArguments",
    "formatParams",
    "daemonAddress",
    "xtextEncode",
]

# The commands whose macros a message's end forgets (a new message brings
# its own); those of CONNECT and HELO last for the connection.
_MESSAGE_STAGES = (wire.MAIL, wire.RCPT, wire.DATA, wire.HEADER, wire.EOH, wire.BODY)
_MESSAGE_STAGES += (wire.BODYEOB,)
_ORDER = (wire.CONNECT, wire.HELO, *_MESSAGE_STAGES, wire.UNKNOWN)


class Macros(Mapping[str, str]):
    """
    The macros the MTA sent, kept per command (stage): a later stage's
    value of a name wins over an earlier one's. Names are looked up as sent
    (C{"j"}, C{"{daemon_name}"}) or without braces (C{"daemon_name"}).
    """

    __slots__ = ("_stages",)

    def __init__(self) -> None:
        self._stages: dict[bytes, dict[str, str]] = {}

    def define(self, command: bytes, values: dict[str, str]) -> None:
        """
        The macros for C{command}, replacing those it had.
        """
        self._stages[command] = values

    def stage(self, command: bytes) -> Mapping[str, str]:
        """
        The macros sent for C{command} alone.
        """
        return self._stages.get(command, {})

    def forgetMessage(self, keep: bytes | None = None) -> None:
        """
        The message ended (EOM, ABORT), or a new one starts: forget the
        macros of a message's stages (but those of C{keep}, just sent).
        """
        for command in _MESSAGE_STAGES:
            if command != keep:
                self._stages.pop(command, None)

    def clear(self) -> None:
        self._stages.clear()

    def _lookup(self, name: str) -> str | None:
        for command in reversed(_ORDER):
            values = self._stages.get(command)
            if values is not None and name in values:
                return values[name]
        return None

    def __getitem__(self, name: str) -> str:
        value = self._lookup(name)
        if value is None and len(name) > 1 and not name.startswith("{"):
            value = self._lookup("{" + name + "}")
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for command in _ORDER:
            for name in self._stages.get(command, {}):
                seen[name] = None
        return iter(seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Macros({dict(self)!r})"


@dataclass(slots=True)
class MilterSession(Session):
    """
    The session of one SMTP client of the MTA, as a milter sees it.

    @ivar macros: the MTA's L{Macros} for this client.
    @ivar peerName: the client's host name as the MTA found it, or L{None}
        (not looked up, or not found).
    """

    macros: Macros = field(default_factory=Macros)
    peerName: str | None = None

    def newTransaction(self, sender: str, params: Params) -> Transaction:
        """
        A transaction whose id is the MTA's queue id (macro C{i}) when the
        MTA has one already; L{MilterSession.learn} sets it later if not.
        """
        transaction = Session.newTransaction(self, sender, params)
        queueId = self.macros.get("i")
        if queueId:
            transaction.id = queueId
        return transaction

    def learn(self) -> None:
        """
        Take what the macros tell: the TLS layer, the AUTH identity, the
        queue id of the transaction.
        """
        macros = self.macros
        version, cipher = macros.get("{tls_version}"), macros.get("{cipher}")
        if version and cipher:
            if self.tls is None or (self.tls.version, self.tls.cipher) != (
                version,
                cipher,
            ):
                self.tls = TLSInfo(version, cipher)
        identity = macros.get("{auth_authen}")
        if identity:
            self.authenticated = identity
        transaction = self.transaction
        queueId = macros.get("i")
        if transaction is not None and queueId:
            transaction.id = queueId


def parseConnect(data: bytes) -> tuple[str | None, IAddress | None]:
    """
    C{(host name, address)} from a CONNECT packet: the family C{4}, C{6}
    (with a port and an address), C{L} (a unix socket: a 2-octet port,
    then its path) or C{U} (unknown: nothing more).

    @raise wire.MilterProtocolError: the packet does not parse.
    """
    end = data.find(b"\0")
    if end < 0 or len(data) < end + 2:
        raise wire.MilterProtocolError("CONNECT without host name and family")
    name = data[:end].decode("utf-8", "surrogateescape")
    family, rest = data[end + 1 : end + 2], data[end + 2 :]
    host = None if name in ("", "unknown") or name.startswith("[") else name
    if family == wire.FAMILY_UNKNOWN:
        return host, None
    if family not in (wire.FAMILY_INET, wire.FAMILY_INET6, wire.FAMILY_UNIX):
        raise wire.MilterProtocolError(f"CONNECT family {family!r}")
    if len(rest) < 3:
        raise wire.MilterProtocolError("CONNECT without port and address")
    (port,) = struct.unpack("!H", rest[:2])
    (text,) = wire.splitStrings(rest[2:], 1)
    address = text.decode("utf-8", "surrogateescape")
    if family == wire.FAMILY_UNIX:
        return host, UNIXAddress(address)
    if family == wire.FAMILY_INET6:
        if address.lower().startswith("ipv6:"):
            address = address[5:]
        return host, IPv6Address("TCP", address, port)
    return host, IPv4Address("TCP", address, port)


def daemonAddress(macros: Mapping[str, str]) -> IAddress | None:
    """
    The MTA's own address on its client's connection, from the macros
    C{{daemon_addr}} and C{{daemon_port}}, if it sent them.
    """
    address = macros.get("{daemon_addr}")
    if not address:
        return None
    try:
        port = int(macros.get("{daemon_port}") or 0)
    except ValueError:
        port = 0
    if address.lower().startswith("ipv6:"):
        address = address[5:]
    if ":" in address:
        return IPv6Address("TCP", address, port)
    return IPv4Address("TCP", address, port)


def parseArguments(data: bytes) -> tuple[str, Params]:
    """
    C{(address, params)} from a MAIL or RCPT packet: the address (angle
    brackets taken off) and its ESMTP parameters as L{Params} (the MTA has
    checked them, so none is unknown; C{ENVID} and C{ORCPT} decoded from
    xtext as the SMTP face does).
    """
    parts = [p.decode("utf-8", "surrogateescape") for p in wire.splitStrings(data)]
    address = parts[0].strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    params = Params()
    for argument in parts[1:]:
        if not argument:
            continue
        keyword, equals, value = argument.partition("=")
        keyword = keyword.upper()
        text: str | None = value if equals else None
        if text is not None and keyword in ("ENVID", "ORCPT"):
            try:
                text = xtextDecode(text)
            except ValueError:
                pass
        params[keyword] = text
    return address, params


def xtextEncode(text: str) -> str:
    """
    C{text} as xtext (RFC 3461 section 4).
    """
    return "".join(
        c
        if "!" <= c <= "~" and c not in "+="
        else "".join(f"+{b:02X}" for b in c.encode("utf-8"))
        for c in text
    )


def formatParams(params: Mapping[str, str | None]) -> str:
    """
    ESMTP parameters as a MAIL or RCPT command gives them (C{ENVID} and
    C{ORCPT} as xtext).
    """
    words = []
    for keyword, value in params.items():
        if value is None:
            words.append(keyword)
            continue
        if keyword in ("ENVID", "ORCPT"):
            value = xtextEncode(value)
        words.append(f"{keyword}={value}")
    return " ".join(words)


def hiddenHeaders(macros: Mapping[str, str]) -> int:
    """
    How many headers of its own the MTA counts in a header index but never
    sent to the milter: Postfix (its version in macro C{v}) puts its
    C{Received:} header first and counts it; Sendmail sends its own.
    """
    return 1 if "postfix" in macros.get("v", "").lower() else 0
