"""
L{RelayOptions}: the relay's options for C{twistd esmtpkit --handler
esmtpkit.handlers.Relay --handler-option key=value}.
"""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.python.usage import UsageError

from ..options import HandlerOptions, positiveFloat, positiveInt
from .spool import SPOOL_MODES, spoolMode
from .upstream import TLS_MODES, UpstreamConfig

__all__ = ["RelayOptions"]


def tlsMode(value: str) -> str:
    """
    A coerce function for the C{tls} option.
    """
    if value not in TLS_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(TLS_MODES)}")
    return value


tlsMode.coerceDoc = "One of " + ", ".join(TLS_MODES) + "."  # type: ignore[attr-defined]


spoolMode.coerceDoc = "One of " + ", ".join(SPOOL_MODES) + "."  # type: ignore[attr-defined]


class RelayOptions(HandlerOptions):
    """
    Where the relay forwards mail, and how.
    """

    optParameters = [
        [
            "host",
            None,
            "localhost",
            "The upstream server's host name or address, or its unix socket "
            "(a path starting with /).",
        ],
        [
            "port",
            None,
            None,
            "The upstream's port (if not given: 25, or 24 with lmtp).",
            positiveInt,
        ],
        [
            "tls",
            None,
            "opportunistic",
            "STARTTLS upstream: required (else 451 4.7.5; the certificate is "
            "verified), opportunistic (when offered, unverified) or off.",
            tlsMode,
        ],
        [
            "ca-file",
            None,
            None,
            "PEM file of the CAs that sign the upstream's certificate "
            "[default: the system's].",
        ],
        [
            "tls-name",
            None,
            None,
            "The name the upstream's certificate must carry [default: host].",
        ],
        ["user", None, None, "Authenticate upstream (AUTH PLAIN or LOGIN) as USER."],
        [
            "password-file",
            None,
            None,
            "File whose first line is the AUTH password (kept out of the "
            "process list).",
        ],
        [
            "spool",
            None,
            "auto",
            "Hold each message in a temporary file until its end, to apply "
            "modifications: auto (when a handler before the relay declares "
            "mayModify), always or never (stream it).",
            spoolMode,
        ],
        ["spool-dir", None, None, "Where messages are spooled [default: TMPDIR]."],
        ["connect-timeout", None, "20", "Seconds to connect.", positiveFloat],
        [
            "command-timeout",
            None,
            "50",
            "Seconds for each reply to a command (keep under --hook-timeout).",
            positiveFloat,
        ],
        [
            "data-timeout",
            None,
            "50",
            "Seconds for each chunk of the message to be taken, and for the "
            "reply at its end (keep under --hook-timeout).",
            positiveFloat,
        ],
    ]

    optFlags = [
        ["lmtp", None, "The upstream speaks LMTP (a reply per recipient)."],
        ["no-verify", None, "With tls=required, do not verify the certificate."],
        ["insecure-auth", None, "Send the credentials without TLS."],
        ["no-received", None, "Do not add a Received: header."],
    ]

    def config(self) -> UpstreamConfig:
        """
        The upstream configuration these options describe.

        @raise UsageError: the values do not go together, or a file cannot
            be read.
        """
        password = None
        if self["password-file"] is not None:
            try:
                with open(self["password-file"], encoding="utf-8") as f:
                    password = f.readline().rstrip("\r\n")
            except OSError as e:
                raise UsageError(f"password-file: {e.strerror}") from None
        if (self["user"] is None) != (password is None):
            raise UsageError("user and password-file go together")
        lmtp = bool(self["lmtp"])
        port = self["port"]
        try:
            return UpstreamConfig(
                self["host"],
                int(port) if port is not None else (24 if lmtp else 25),
                tls=self["tls"],
                verify=not self["no-verify"],
                caFile=self["ca-file"],
                tlsName=self["tls-name"],
                user=self["user"],
                password=password,
                insecureAuth=bool(self["insecure-auth"]),
                lmtp=lmtp,
                connectTimeout=float(self["connect-timeout"]),
                commandTimeout=float(self["command-timeout"]),
                dataTimeout=float(self["data-timeout"]),
            )
        except ValueError as e:
            raise UsageError(str(e)) from None

    def relayKeywords(self) -> dict[str, Any]:
        """
        The L{Relay <esmtpkit.handlers.Relay>} keyword arguments, with the
        upstream configuration made once.
        """
        spoolDir = self["spool-dir"]
        if spoolDir is not None:
            try:
                tempfile.TemporaryFile(dir=spoolDir).close()
            except OSError as e:
                raise UsageError(f"spool-dir {spoolDir}: {e.strerror}") from None
        return {
            "config": self.config(),
            "received": not self["no-received"],
            "spool": self["spool"],
            "spoolDir": spoolDir,
        }
