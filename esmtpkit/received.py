"""
The C{Received:} trace header (RFC 5321 section 4.4) for a message, whose
C{with} clause names the protocol (RFC 3848: SMTP, ESMTP, LMTP, with S for
TLS and A for AUTH).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from .session import Session, Transaction

__all__ = ["receivedHeader"]


def receivedHeader(
    session: Session, transaction: Transaction, when: datetime | None = None
) -> bytes:
    """
    A C{Received:} header for C{transaction}, folded, ending with CRLF.

    It names the client (its HELO name and IP address), this server, the
    protocol (SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA, RFC 3848), the
    transaction id, the recipient when there is exactly one, and the date.
    """
    ip = session.peerHost
    if ":" in ip:
        ip = "IPv6:" + ip
    origin = f"[{ip}]" if ip else "unknown"
    lines = [
        f"Received: from {session.heloName or 'unknown'} ({origin})",
        f"\tby {session.hostname} (esmtpkit) with {session.withProtocol}"
        f" id {transaction.id}",
    ]
    if len(transaction.recipients) == 1:
        lines.append(f"\tfor <{transaction.recipients[0].address}>")
    date = format_datetime((when or datetime.now(UTC)).astimezone())
    lines[-1] += ";"
    lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
