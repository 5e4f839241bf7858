"""
The C{Received:} trace header (RFC 5321 section 4.4) for a message, whose
C{with} clause names the protocol (RFC 3848: SMTP, ESMTP, LMTP, with S for
TLS and A for AUTH).

Most of what goes into it comes from the client (the HELO name, the
recipient, behind C{haproxy:} the peer address), so every field is cleaned
before it is written: no line ending, control character or white space, none
of the characters that would end a comment, a quoted string or the header's
date clause early (C{( ) < > ; \\ "}), 8-bit text only when the message was
sent with SMTPUTF8, and no field longer than SMTP allows a domain or a path
(255 and 256 octets). Each clause has its own line, so no line of the header
comes near RFC 5322's limit of 998 octets.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime

from .session import Session, Transaction
from .smtp.address import MAX_DOMAIN, isValidMailbox

__all__ = ["receivedHeader", "headerToken"]

MAX_ID = 64
"""Longest transaction id written (esmtpkit's own ids have 15 characters)."""

_UNSAFE = frozenset('()<>;\\"')

# Printable ASCII but for white space and the characters of _UNSAFE: the
# text that headerToken leaves as it is.
_SAFE = re.compile(r"[!#-'*-:=?-\[\]-~]*")


def headerToken(text: str, limit: int, utf8: bool = False) -> str:
    """
    C{text} made safe as one token of a trace header: every character that
    is not printable, is white space, ends a comment, quoted string or
    clause (C{( ) < > ; \\ "}), or is not ASCII when C{utf8} is false,
    becomes C{?}; then the result is cut to at most C{limit} octets of
    UTF-8 (never inside a character).
    """
    if _SAFE.fullmatch(text):
        return text[:limit]  # one octet a character
    return _cleanToken(text, limit, utf8)


def _cleanToken(text: str, limit: int, utf8: bool) -> str:
    # headerToken character by character (the fast path's reference).
    clean = []
    size = 0
    for char in text:
        if char in _UNSAFE or not char.isprintable() or char.isspace():
            char = "?"
        elif not char.isascii():
            if not utf8:
                char = "?"
            else:
                try:
                    char.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate
                    char = "?"
        octets = 1 if char.isascii() else len(char.encode("utf-8"))
        if size + octets > limit:
            break
        size += octets
        clean.append(char)
    return "".join(clean)


@functools.lru_cache(maxsize=1024)
def _origin(host: str) -> str:
    """
    The client's address for the C{from} clause: C{[192.0.2.1]} or
    C{[IPv6:2001:db8::1]} for an IP address, otherwise the cleaned text (a
    socket path), or C{unknown}.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return headerToken(host, MAX_DOMAIN) or "unknown"
    prefix = "IPv6:" if address.version == 6 else ""
    # headerToken again: an IPv6 scope (after %) is free text.
    return "[" + headerToken(prefix + address.compressed, MAX_DOMAIN) + "]"


_date: tuple[int, str] = (-1, "")


def _now() -> str:
    # The date clause of now, made once a second (it names whole seconds).
    global _date
    second = int(time.time())
    if _date[0] != second:
        moment = datetime.fromtimestamp(second, UTC).astimezone()
        _date = (second, format_datetime(moment))
    return _date[1]


def receivedHeader(
    session: Session, transaction: Transaction, when: datetime | None = None
) -> bytes:
    """
    A C{Received:} header for C{transaction}, folded, ending with CRLF.

    It names the client (its HELO name and IP address), this server, the
    protocol (SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA, RFC 3848), the
    transaction id, the recipient when there is exactly one, and the date.
    Client-supplied text is cleaned (see L{headerToken}); the recipient is
    named only when it is a valid mailbox.
    """
    utf8 = "SMTPUTF8" in transaction.mailParams
    helo = headerToken(session.heloName or "", MAX_DOMAIN, utf8) or "unknown"
    hostname = headerToken(session.hostname, MAX_DOMAIN, utf8) or "unknown"
    protocol = headerToken(session.withProtocol, MAX_ID)
    transactionId = headerToken(transaction.id, MAX_ID) or "unknown"
    lines = [
        f"Received: from {helo} ({_origin(session.peerHost)})",
        f"\tby {hostname} (esmtpkit) with {protocol} id {transactionId}",
    ]
    if len(transaction.recipients) == 1:
        address = transaction.recipients[0].address
        if isValidMailbox(address, utf8):  # within MAX_PATH, no CR or LF
            lines.append(f"\tfor <{address}>")
    date = _now() if when is None else format_datetime(when.astimezone())
    lines[-1] += ";"
    lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
