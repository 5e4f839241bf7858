"""
L{Settings}: every tunable of an esmtpkit server, with safe defaults.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, fields

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
    @ivar idleTimeout: seconds a client may stay silent before 421 4.4.2.
    @ivar hookTimeout: seconds a hook may take before the client gets
        451 4.3.0; 0 for no limit.
    @ivar enhancedStatusCodes: advertise ENHANCEDSTATUSCODES and write
        enhanced codes on replies.
    @ivar pipelining: advertise PIPELINING (RFC 2920).
    @ivar smtputf8: advertise SMTPUTF8 (RFC 6531).
    @ivar logLevel: the least severe esmtpkit event that is logged.
    """

    hostname: str = field(default_factory=_defaultHostname)
    chunkSize: int = 65536
    maxLineLength: int = 2048
    maxHeaderSize: int = 256 * 1024
    maxMessageSize: int = 32 * 1024 * 1024
    maxRecipients: int = 1000
    idleTimeout: float = 300.0
    hookTimeout: float = 60.0
    enhancedStatusCodes: bool = True
    pipelining: bool = True
    smtputf8: bool = True
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
        for name in ("maxMessageSize", "hookTimeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")

    @classmethod
    def names(cls) -> list[str]:
        """
        The names of all settings.
        """
        return [f.name for f in fields(cls)]
