"""
Per-connection and per-transaction state that handlers can read.

The protocol owns these objects and updates them as the conversation goes;
handlers read them (C{self.session}) and may hang their own data on
L{Session.data} and L{Transaction.data}.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress

from .core.modifications import Modifications

__all__ = ["Recipient", "Session", "Transaction", "TLSInfo", "Params"]


class Params(dict[str, "str | None"]):
    """
    ESMTP parameters of a MAIL or RCPT command: upper-cased keyword to value,
    L{None} for a keyword without a value (C{SMTPUTF8}). Values of known
    parameters are checked and normalised (C{BODY}, C{RET} and C{NOTIFY}
    upper-cased; C{ENVID} and C{ORCPT} decoded from xtext).

    @ivar unknown: the keywords esmtpkit does not handle itself; the default
        handler refuses them (555 5.5.4), a handler that understands them
        may accept them.
    """

    unknown: frozenset[str] = frozenset()


def _newPrefix() -> None:
    global _idPrefix
    _idPrefix = secrets.token_hex(3).upper()


# Unique across processes: a random prefix per process, renewed in a forked
# child; then a counter, so no system randomness per connection.
_idPrefix = ""
_newPrefix()
os.register_at_fork(after_in_child=_newPrefix)
_idCounter = itertools.count(1)


def _newId() -> str:
    return f"{_idPrefix}{next(_idCounter):06X}"


@dataclass(frozen=True)
class Recipient:
    """
    One accepted recipient of a transaction.

    @ivar address: the forward-path address, without angle brackets.
    @ivar params: its ESMTP parameters.
    """

    address: str
    params: Params = field(default_factory=Params)

    def __str__(self) -> str:
        return self.address


@dataclass(frozen=True)
class TLSInfo:
    """
    What a handler may know about the TLS layer of a session.

    @ivar version: the protocol version, such as C{"TLSv1.3"}.
    @ivar cipher: the cipher suite name.
    @ivar peerCertificate: the client's certificate, if it sent one.
    """

    version: str
    cipher: str
    peerCertificate: Any = None


class _HandlerData:
    """
    A C{data} dict free for the handler's own use, made on first use (most
    sessions and transactions never need one).
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        """
        Free for the handler's own use.
        """
        try:
            return self._data
        except AttributeError:  # the slot is empty until first use
            self._data = {}
            return self._data


@dataclass(slots=True)
class Transaction(_HandlerData):
    """
    One mail transaction: from an accepted MAIL to the end of the message,
    RSET, a new HELO/EHLO, or the end of the connection.

    @ivar id: a per-transaction id, the session id with a sequence number.
    @ivar sender: the reverse-path address without angle brackets; C{""} for
        the null sender C{MAIL FROM:<>}.
    @ivar mailParams: the ESMTP parameters of the MAIL command.
    @ivar recipients: the recipients accepted so far, in order.
    @ivar headers: the message headers seen so far, unfolded, as
        C{(name, value)} pairs.
    @ivar rawHeaders: the header section exactly as received (after
        dot-unstuffing), including the empty line that ended it if there was
        one; the message is C{rawHeaders} followed by the BODY chunks.
    @ivar size: the number of message bytes received so far.
    @ivar data: free for the handler's own use.
    """

    id: str
    sender: str
    mailParams: Params = field(default_factory=Params)
    recipients: list[Recipient] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    rawHeaders: bytes = b""
    size: int = 0
    _modifications: Modifications | None = field(default=None, repr=False)

    @property
    def modifications(self) -> Modifications:
        """
        The changes the handler asks for this message at EOM (see
        L{Modifications}); made on first use.
        """
        changes = self._modifications
        if changes is None:
            changes = self._modifications = Modifications()
        return changes

    @property
    def modified(self) -> bool:
        """
        Whether any change was asked for.
        """
        return bool(self._modifications)


@dataclass(slots=True)
class Session(_HandlerData):
    """
    The state of one SMTP connection.

    @ivar id: a random id, used in every log line about this session.
    @ivar peer: the client's address (an L{IAddress}; behind a C{haproxy:}
        listener, the address the proxy reported).
    @ivar host: our own address on this connection.
    @ivar hostname: the server name used in the greeting and replies.
    @ivar heloName: the name the client gave in HELO/EHLO, or L{None}.
    @ivar esmtp: C{True} once the client greeted with EHLO.
    @ivar tls: L{TLSInfo} while the connection is encrypted, else L{None}.
    @ivar authenticated: the authenticated identity, or L{None}.
    @ivar authMechanism: the SASL mechanism that authenticated it (such as
        C{"PLAIN"}), or L{None}.
    @ivar transaction: the current L{Transaction}, or L{None}.
    @ivar messages: how many messages were accepted (for at least one
        recipient) on this connection.
    @ivar lmtp: C{True} on an LMTP connection.
    @ivar data: free for the handler's own use (a dict, made on first use:
        most connections never need one).
    """

    peer: IAddress | None = None
    host: IAddress | None = None
    hostname: str = "localhost"
    id: str = field(default_factory=_newId)
    heloName: str | None = None
    esmtp: bool = False
    tls: TLSInfo | None = None
    authenticated: Any = None
    authMechanism: str | None = None
    transaction: Transaction | None = None
    messages: int = 0
    transactions: int = 0
    lmtp: bool = False

    @property
    def peerHost(self) -> str:
        """
        The client's IP address as text (or the socket path, or C{""}).
        """
        return _addressHost(self.peer)

    @property
    def withProtocol(self) -> str:
        """
        The protocol name for a C{Received:} header's C{with} clause
        (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, or LMTP with the
        same suffixes.
        """
        if self.lmtp:
            name = "LMTP"
        elif not self.esmtp:
            return "SMTP"
        else:
            name = "ESMTP"
        if self.tls is not None:
            name += "S"
        if self.authenticated is not None:
            name += "A"
        return name

    def newTransaction(self, sender: str, params: Params) -> Transaction:
        """
        Start a transaction for C{sender} (called by the protocol).
        """
        self.transactions += 1
        return Transaction(
            id=f"{self.id}.{self.transactions}", sender=sender, mailParams=params
        )


def _addressHost(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    if isinstance(name, str):
        return name
    return ""
