"""
L{Settings}: every tunable of an esmtpkit server, with safe defaults.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import LogLevel

__all__ = ["Settings"]


def _defaultHostname() -> str:
    # gethostname() never touches DNS, unlike getfqdn(), so start-up cannot hang.
    return socket.gethostname() or "localhost"


@dataclass(frozen=True)
class Settings:
    """
    Server settings shared by all connections of an L{ESMTPFactory}.

    @ivar hostname: our name in the greeting, EHLO/HELO replies and
        C{Received:} headers.
    @ivar chunkSize: the largest BODY chunk, in bytes.
    @ivar maxLineLength: the longest command line, in bytes without CRLF
        (RFC 5321 asks for at least 512 with CRLF; ESMTP parameters need
        more). A longer line is answered with 500 5.5.6.
    @ivar maxHeaderSize: the largest header section of a message, in bytes;
        also the longest single header line. Beyond it the message is
        refused with 552 5.3.4 after its end.
    @ivar maxMessageSize: the largest message, in bytes (advertised as
        C{SIZE}); 0 for no limit. Beyond it the message is refused with
        552 5.3.4 after its end and nothing is delivered.
    @ivar maxRecipients: recipients accepted per transaction; more get
        452 4.5.3.
    @ivar idleTimeout: seconds a client may stay silent between commands
        before 421 4.4.2; also the base deadline for a whole message.
    @ivar minDataRate: bytes per second that extend the deadline of a
        message (DATA or BDAT) as they arrive, so a client that trickles
        cannot hold a session (Postfix's smtpd_min_data_rate); 0 turns the
        deadline off and only the idle timeout applies.
    @ivar hookTimeout: seconds a hook may take before the client gets
        451 4.3.0; 0 for no limit.
    @ivar bareLineEndings: what to do with a bare LF or bare CR in a command
        or in DATA: C{"reject"} (the command gets 500 5.5.2; the message is
        read to its end and refused with 550 5.5.2) or C{"normalize"} (a
        bare LF is taken as CRLF, a bare CR is dropped). Only
        C{<CR><LF>.<CR><LF>} ever ends DATA.
    @ivar softErrorLimit: after this many error replies on a connection,
        each further error slows the session down by C{errorDelay} seconds
        more than the last.
    @ivar hardErrorLimit: after this many error replies the server answers
        421 4.7.0 and closes the connection.
    @ivar errorDelay: the delay step past the soft error limit, in seconds.
    @ivar maxConnections: connections served at once; more get 421 4.7.0
        (0 for no limit).
    @ivar maxConnectionsPerPeer: connections served at once from one IP
        address; more get 421 4.7.0 (0 for no limit).
    @ivar connectionLimitExempt: networks (CIDR) the per-peer limit does not
        apply to.
    @ivar shutdownTimeout: seconds the transactions in flight get to finish
        when the server shuts down (SIGTERM, C{stopService}); idle sessions
        get 421 4.3.2 at once, and at the deadline every remaining one does
        (see docs/shutdown.md). 0: close every connection at once.
    @ivar greetingDelay: seconds to wait before the greeting; a client that
        talks first gets 554 5.5.0 and is disconnected (0: greet at once).
    @ivar enforceSync: answer 554 5.5.0 and disconnect a client that sends
        before it may: before the greeting, after a command whose reply it
        must wait for (HELO, EHLO, DATA, ...), or several commands at once
        without PIPELINING (Postfix's smtpd_forbid_unauth_pipelining).
    @ivar requireTLS: refuse MAIL and AUTH with 530 5.7.0 until the
        connection is encrypted (STARTTLS or an implicit TLS listener).
    @ivar allowInsecureAuth: offer and accept AUTH without TLS.
    @ivar requireAuth: refuse MAIL with 530 5.7.0 until the client has
        authenticated.
    @ivar maxAuthFailures: failed AUTH attempts per connection before 421
        4.7.0 (each failure also waits C{errorDelay} seconds per failure so
        far); 0 for no limit.
    @ivar enhancedStatusCodes: advertise ENHANCEDSTATUSCODES (RFC 2034) and
        write enhanced codes on replies.
    @ivar pipelining: advertise PIPELINING (RFC 2920). A client that sends
        commands ahead of replies without it (or after EHLO, DATA or QUIT)
        gets 554 5.5.0 and is disconnected.
    @ivar size: advertise SIZE (RFC 1870); C{maxMessageSize} applies anyway.
    @ivar eightBitMIME: advertise 8BITMIME (RFC 6152).
    @ivar smtputf8: advertise SMTPUTF8 (RFC 6531).
    @ivar chunking: advertise CHUNKING (RFC 3030, the BDAT command).
    @ivar binaryMIME: advertise BINARYMIME (RFC 3030; needs CHUNKING).
    @ivar dsn: advertise DSN (RFC 3461) and accept its parameters.
    @ivar limits: advertise LIMITS (RFC 9422) with RCPTMAX.
    @ivar logLevel: the least severe esmtpkit event that is logged.
    """

    hostname: str = field(default_factory=_defaultHostname)
    chunkSize: int = 65536
    maxLineLength: int = 2048
    maxHeaderSize: int = 256 * 1024
    maxMessageSize: int = 32 * 1024 * 1024
    maxRecipients: int = 1000
    idleTimeout: float = 300.0
    minDataRate: int = 500
    hookTimeout: float = 60.0
    bareLineEndings: str = "reject"
    softErrorLimit: int = 10
    hardErrorLimit: int = 20
    errorDelay: float = 1.0
    maxConnections: int = 1000
    maxConnectionsPerPeer: int = 50
    connectionLimitExempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    shutdownTimeout: float = 30.0
    greetingDelay: float = 0.0
    enforceSync: bool = True
    requireTLS: bool = False
    allowInsecureAuth: bool = False
    requireAuth: bool = False
    maxAuthFailures: int = 3
    enhancedStatusCodes: bool = True
    pipelining: bool = True
    size: bool = True
    eightBitMIME: bool = True
    smtputf8: bool = True
    chunking: bool = True
    binaryMIME: bool = True
    dsn: bool = True
    limits: bool = True
    logLevel: LogLevel = LogLevel.info

    def __post_init__(self) -> None:
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError(f"hostname: {self.hostname!r} is not a host name")
        positive = ("chunkSize", "maxHeaderSize", "maxRecipients", "idleTimeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.maxLineLength < 510:
            raise ValueError("maxLineLength: must be at least 510 (RFC 5321)")
        nonNegative = (
            "maxMessageSize",
            "hookTimeout",
            "minDataRate",
            "softErrorLimit",
            "hardErrorLimit",
            "errorDelay",
            "maxConnections",
            "maxConnectionsPerPeer",
            "greetingDelay",
            "shutdownTimeout",
            "maxAuthFailures",
        )
        for name in nonNegative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.bareLineEndings not in ("reject", "normalize"):
            raise ValueError("bareLineEndings: must be 'reject' or 'normalize'")
        try:
            networks = tuple(
                ipaddress.ip_network(n, strict=False)
                for n in self.connectionLimitExempt
            )
        except ValueError as e:
            raise ValueError(f"connectionLimitExempt: {e}") from None
        object.__setattr__(self, "exemptNetworks", networks)

    def isExempt(self, host: str) -> bool:
        """
        Whether the per-peer connection limit spares C{host} (an IP address).
        """
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        networks: tuple[Any, ...] = self.exemptNetworks  # type: ignore[attr-defined]
        return any(address in network for network in networks)
