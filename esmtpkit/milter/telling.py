"""
What esmtpkit tells a milter about a session, in the forms Postfix uses: the
connect information, the macros (C{j}, C{{client_addr}}, C{i}, ...), ESMTP
arguments, and header fields as the milter wants them.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from ..session import Params, Session
from . import wire

__all__ = ["connectInfo", "sessionMacros", "esmtpArgs", "headerFields"]


def _version() -> str:
    from .. import __version__

    return f"esmtpkit {__version__}"


def _hostPort(address: object) -> tuple[str, int]:
    host = getattr(address, "host", None)
    port = getattr(address, "port", 0)
    return (host if isinstance(host, str) else ""), (
        port if isinstance(port, int) else 0
    )


def connectInfo(session: Session) -> tuple[str, bytes, int, str]:
    """
    C{(hostname, family, port, address)} for SMFIC_CONNECT: an IP peer is
    named C{[address]} (esmtpkit does no reverse lookups), a unix socket
    peer C{localhost}.
    """
    peer = session.peer
    if isinstance(peer, IPv4Address | IPv6Address):
        v6 = isinstance(peer, IPv6Address)
        family = wire.FAMILY_INET6 if v6 else wire.FAMILY_INET
        return f"[{peer.host}]", family, peer.port, peer.host
    if isinstance(peer, UNIXAddress):
        name = peer.name
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else ""
        return "localhost", wire.FAMILY_UNIX, 0, path
    return "localhost", wire.FAMILY_UNKNOWN, 0, ""


def sessionMacros(session: Session, daemonName: str | None = None) -> dict[str, str]:
    """
    The macro values known now for C{session}, by name.

    @param daemonName: C{{daemon_name}} (Postfix's
        C{milter_macro_daemon_name}); default the server's host name.
    """
    macros: dict[str, str] = {
        "j": session.hostname,
        "{daemon_name}": daemonName or session.hostname,
        "v": _version(),
    }
    ourHost, ourPort = _hostPort(session.host)
    if ourHost:
        macros["{daemon_addr}"] = ourHost
        macros["{daemon_port}"] = str(ourPort)
    peerHost, peerPort = _hostPort(session.peer)
    if peerHost:
        macros["{client_addr}"] = peerHost
        macros["{client_port}"] = str(peerPort)
        macros["{client_name}"] = "unknown"
        macros["_"] = f"unknown [{peerHost}]"
    elif isinstance(session.peer, UNIXAddress):
        macros["{client_addr}"] = "127.0.0.1"
        macros["{client_name}"] = "localhost"
        macros["_"] = "localhost [127.0.0.1]"
    tls = session.tls
    if tls is not None:
        macros["{tls_version}"] = tls.version
        macros["{cipher}"] = tls.cipher
    if session.authenticated is not None:
        identity = session.authenticated
        if isinstance(identity, bytes):
            identity = identity.decode("utf-8", "replace")
        macros["{auth_authen}"] = str(identity)
        mechanism = getattr(session, "authMechanism", None)
        if mechanism:
            macros["{auth_type}"] = mechanism
    transaction = session.transaction
    if transaction is not None:
        macros["i"] = transaction.id
        macros["{mail_addr}"] = transaction.sender
        author = transaction.mailParams.get("AUTH")
        if author and author != "<>":
            macros["{auth_author}"] = author
        if transaction.recipients:
            macros["{rcpt_addr}"] = transaction.recipients[-1].address
    return macros


def esmtpArgs(params: Params) -> list[str]:
    """
    ESMTP parameters as MAIL and RCPT arguments: C{KEYWORD=value} (the value
    as esmtpkit decoded it), or C{KEYWORD}.
    """
    return [k if v is None else f"{k}={v}" for k, v in params.items()]


def headerFields(raw: bytes, leadingSpace: bool) -> Iterator[tuple[bytes, bytes]]:
    """
    C{(name, value)} of each header field of the raw header section C{raw},
    byte for byte: folded lines joined by LF (as Postfix sends them), the
    white space after the colon kept when C{leadingSpace} is true, else
    dropped. A line that is neither a field nor a continuation is skipped.
    """
    field: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        if field:
            yield _field(field, leadingSpace)
            field = []
        if b":" in line:
            field = [line]
    if field:
        yield _field(field, leadingSpace)


def _field(lines: list[bytes], leadingSpace: bool) -> tuple[bytes, bytes]:
    name, _, value = lines[0].partition(b":")
    if not leadingSpace:
        value = value.lstrip(b" \t")
    return name.rstrip(b" \t"), b"\n".join([value, *lines[1:]])
