"""
The values of C{twistd esmtpkit}'s options: how each setting is parsed from
the command line (sizes with K/M/G, counts, seconds, networks, log levels),
the table of options that set a field of L{Settings <esmtpkit.Settings>},
and the EHLO extensions C{--disable-extension} knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import InvalidLogLevelError, LogLevel

__all__ = ["SETTINGS", "EXTENSIONS", "OPTION_OF", "asBytes"]


def _size(text: str) -> int:
    """
    A byte count: a whole number, optionally with K, M or G (binary units).
    """
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    normal = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(normal[-1:], 1)
    number = normal[:-1] if factor != 1 else normal
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size such as 65536 or 64K")
    return int(number) * factor


def asBytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _seconds(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a number of seconds")
    return value


def _networks(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _level(text: str) -> LogLevel:
    try:
        level: LogLevel = LogLevel.levelWithName(text.lower())
    except InvalidLogLevelError:
        raise ValueError(
            f"{text!r} is not one of debug, info, warn, error, critical"
        ) from None
    return level


# Options that set a field of Settings: (option, field, parser, default, help).
SETTINGS: list[tuple[str, str, Callable[[str], Any], str | None, str]] = [
    (
        "hostname",
        "hostname",
        str,
        None,
        "Server name in the greeting, replies and Received: headers "
        "[default: this host's name].",
    ),
    (
        "chunk-size",
        "chunkSize",
        _size,
        "64K",
        "Largest BODY chunk handed to the handler (bytes; K/M suffixes).",
    ),
    (
        "max-message-size",
        "maxMessageSize",
        _size,
        "32M",
        "Largest message accepted, advertised as SIZE (bytes; K/M/G suffixes; "
        "0 for no limit).",
    ),
    (
        "max-line-length",
        "maxLineLength",
        _size,
        "2048",
        "Longest command line in bytes (at least 510); longer gets 500 5.5.6.",
    ),
    (
        "max-header-size",
        "maxHeaderSize",
        _size,
        "256K",
        "Largest header section of a message in bytes; larger gets 552 5.3.4.",
    ),
    (
        "max-recipients",
        "maxRecipients",
        _count,
        "1000",
        "Recipients per transaction (advertised as LIMITS RCPTMAX); more get "
        "452 4.5.3.",
    ),
    (
        "idle-timeout",
        "idleTimeout",
        _seconds,
        "300",
        "Seconds a client may stay silent; then 421 4.4.2.",
    ),
    (
        "min-data-rate",
        "minDataRate",
        _count,
        "500",
        "Bytes per second a message must arrive at, after the first "
        "idle-timeout seconds; slower gets 421 4.4.2 (0: off).",
    ),
    (
        "hook-timeout",
        "hookTimeout",
        _seconds,
        "60",
        "Seconds a handler hook may take; then the client gets 451 4.3.0 "
        "(0: no limit).",
    ),
    (
        "bare-lf",
        "bareLineEndings",
        str,
        "reject",
        "Bare LF or CR in commands and DATA: 'reject' (500/550 5.5.2) or "
        "'normalize' (LF taken as CRLF, CR dropped).",
    ),
    (
        "soft-error-limit",
        "softErrorLimit",
        _count,
        "10",
        "Error replies after which each further error slows the client down.",
    ),
    (
        "hard-error-limit",
        "hardErrorLimit",
        _count,
        "20",
        "Error replies after which the client gets 421 4.7.0 and is disconnected.",
    ),
    (
        "error-delay",
        "errorDelay",
        _seconds,
        "1",
        "Delay step, in seconds, past the soft error limit.",
    ),
    (
        "max-connections",
        "maxConnections",
        _count,
        "1000",
        "Connections served at once; more get 421 4.7.0 (0: no limit).",
    ),
    (
        "max-connections-per-ip",
        "maxConnectionsPerPeer",
        _count,
        "50",
        "Connections served at once from one IP address; more get 421 4.7.0 "
        "(0: no limit).",
    ),
    (
        "connection-limit-exempt",
        "connectionLimitExempt",
        _networks,
        "127.0.0.0/8,::1/128",
        "Comma-separated networks the per-IP limit does not apply to.",
    ),
    (
        "greeting-delay",
        "greetingDelay",
        _seconds,
        "0",
        "Seconds to wait before the greeting; a client that talks first gets "
        "554 5.5.0.",
    ),
    (
        "shutdown-timeout",
        "shutdownTimeout",
        _seconds,
        "30",
        "Seconds the transactions in flight get to finish on SIGTERM; idle "
        "sessions, and at the deadline all others, get 421 4.3.2 (0: at once).",
    ),
    (
        "max-auth-failures",
        "maxAuthFailures",
        _count,
        "3",
        "Failed AUTH attempts per connection before 421 4.7.0 (0: no limit).",
    ),
    (
        "log-level",
        "logLevel",
        _level,
        "info",
        "Least severe esmtpkit event to log: debug (every reply), info "
        "(connections and messages), warn, error or critical.",
    ),
]

# EHLO keywords that --disable-extension turns off, and their Settings field.
EXTENSIONS = {
    "PIPELINING": "pipelining",
    "SIZE": "size",
    "8BITMIME": "eightBitMIME",
    "SMTPUTF8": "smtputf8",
    "ENHANCEDSTATUSCODES": "enhancedStatusCodes",
    "CHUNKING": "chunking",
    "BINARYMIME": "binaryMIME",
    "DSN": "dsn",
    "LIMITS": "limits",
}

OPTION_OF = {field: option for option, field, _, _, _ in SETTINGS}
