"""
L{Debug}: prints what a client sends, as it streams, for a person to read
("what is this client sending me?").
"""

from __future__ import annotations

import sys
from typing import IO, Any

from ..handler import ESMTPHandler
from ..reply import HookResult
from ..session import Params
from .options import HandlerOptions

__all__ = ["Debug", "DebugOptions"]


def _shown(text: object) -> str:
    """
    C{text} safe to print: unprintable characters (and undecodable bytes,
    kept as lone surrogates) escaped as Python would show them.
    """
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():
        return value
    return repr(value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))[
        1:-1
    ]


def _params(params: Params) -> str:
    if not params:
        return ""
    shown = " ".join(
        key if value is None else f"{key}={_shown(value)}"
        for key, value in params.items()
    )
    return f" [{shown}]"


class DebugOptions(HandlerOptions):
    optParameters = [
        [
            "output",
            None,
            "-",
            "Where to print: - for standard output (under twistd, the log), "
            "or a file to append to.",
        ]
    ]


class Debug(ESMTPHandler):
    """
    Prints each event of the conversation on a line of its own, prefixed
    with the session id: the connection, the greeting, the envelope (with
    ESMTP parameters), each header as it arrives, the body's size as it
    streams, the end of the message with its size, TLS, AUTH, and the end
    of the transaction and of the connection. Every reply is the default
    one; in a L{Chain <esmtpkit.handlers.Chain>}, put it first: it has no
    opinion.

    @ivar stream: where the lines go.
    """

    Options = DebugOptions

    def __init__(self, output: str | IO[str] = "-") -> None:
        """
        @param output: a text stream, C{"-"} for standard output (looked up
            at each line, so a redirected C{sys.stdout} is followed), or the
            path of a file to append to.
        """
        super().__init__()
        self._output = output
        self._bodyBytes = 0

    @classmethod
    def fromHandlerOptions(cls, options: DebugOptions) -> Any:
        """
        One file for all connections, opened at start-up (so a path that
        cannot be written to stops it), line-buffered.
        """
        output = options["output"]
        if output == "-":
            return cls
        stream = open(output, "a", buffering=1, encoding="utf-8", errors="replace")
        return lambda: cls(stream)

    @property
    def stream(self) -> IO[str]:
        output = self._output
        if isinstance(output, str):
            if output == "-":
                return sys.stdout
            output = self._output = open(
                output, "a", buffering=1, encoding="utf-8", errors="replace"
            )
        return output

    def _say(self, text: str) -> None:
        stream = self.stream
        stream.write(f"[{self.session.id}] {text}\n")
        stream.flush()

    def CONNECT(self) -> HookResult:
        session = self.session
        kind = "LMTP" if session.lmtp else "SMTP"
        tls = f", {session.tls.version}" if session.tls is not None else ""
        self._say(
            f"{kind} connection from {_address(session.peer)} to "
            f"{_address(session.host)}{tls}"
        )
        return None

    def HELO(self, domain: str) -> HookResult:
        self._say(f"HELO {_shown(domain)}")
        return None

    def EHLO(self, domain: str) -> HookResult:
        self._say(f"{'LHLO' if self.session.lmtp else 'EHLO'} {_shown(domain)}")
        return None

    def STARTTLS(self) -> HookResult:
        self._say("STARTTLS")
        return None

    def AUTH(self, identity: str) -> HookResult:
        self._say(f"AUTH as {_shown(identity)}")
        return None

    def MAIL(self, sender: str, params: Params) -> HookResult:
        self._say(f"MAIL FROM:<{_shown(sender)}>{_params(params)}")
        return None

    def RCPT(self, recipient: str, params: Params) -> HookResult:
        self._say(f"RCPT TO:<{_shown(recipient)}>{_params(params)}")
        return None

    def DATA(self) -> HookResult:
        transaction = self.session.transaction
        count = len(transaction.recipients) if transaction is not None else 0
        self._say(f"DATA for {count} recipient{'s' if count != 1 else ''}")
        self._bodyBytes = 0
        return None

    def HEADER(self, name: str, value: str) -> HookResult:
        self._say(f"  {_shown(name)}: {_shown(value)}")
        return None

    def EOH(self) -> HookResult:
        transaction = self.session.transaction
        size = len(transaction.rawHeaders) if transaction is not None else 0
        self._say(f"  (end of headers, {size} bytes)")
        return None

    def BODY(self, chunk: bytes) -> HookResult:
        self._bodyBytes += len(chunk)
        self._say(f"  body: {len(chunk)} bytes ({self._bodyBytes} so far)")
        return None

    def EOM(self) -> HookResult:
        transaction = self.session.transaction
        size = transaction.size if transaction is not None else 0
        self._say(f"end of message: {size} bytes, body {self._bodyBytes} bytes")
        return None

    def ABORT(self) -> HookResult:
        self._say("transaction aborted")
        return None

    def RSET(self) -> HookResult:
        self._say("RSET")
        return None

    def NOOP(self) -> HookResult:
        self._say("NOOP")
        return None

    def VRFY(self, address: str) -> HookResult:
        self._say(f"VRFY {_shown(address)}")
        return None

    def EXPN(self, address: str) -> HookResult:
        self._say(f"EXPN {_shown(address)}")
        return None

    def HELP(self, topic: str | None) -> HookResult:
        self._say("HELP" + (f" {_shown(topic)}" if topic else ""))
        return None

    def UNKNOWN(self, line: str) -> HookResult:
        self._say(f"unknown command: {_shown(line)}")
        return None

    def QUIT(self) -> HookResult:
        self._say("QUIT")
        return None

    def DISCONNECT(self) -> HookResult:
        session = self.session
        self._say(f"disconnected after {session.messages} message(s)")
        return None


def _address(address: Any) -> str:
    if address is None:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) if name else repr(address)
