"""
C{twistd esmtpkit}: command-line options and the service they describe.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.application.service import IService
from twisted.logger import InvalidLogLevelError, LogLevel
from twisted.python import usage
from twisted.python.reflect import namedAny
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass

from .interfaces import IESMTPHandler
from .service import DEFAULT_PORT, ESMTPService
from .settings import Settings

__all__ = ["Options", "makeService"]

DEFAULT_HANDLER = "esmtpkit.handlers.Maildir"


def _size(text: str) -> int:
    """
    A byte count: a whole number, optionally with K, M or G (binary units).
    """
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size")
    return int(number) * factor


_OPTION_OF = {
    "hostname": "hostname",
    "chunkSize": "chunk-size",
    "maxMessageSize": "max-message-size",
}


class Options(usage.Options):
    """
    Options of C{twistd esmtpkit}.
    """

    synopsis = "[options]"
    longdesc = (
        "A programmable ESMTP server. With no options it listens on "
        f"{DEFAULT_PORT} and delivers every message into ./Maildir. "
        "--handler names a class (or any callable) providing "
        "esmtpkit.IESMTPHandler; one instance serves each connection."
    )

    optParameters = [
        [
            "handler",
            None,
            DEFAULT_HANDLER,
            "Dotted name of the handler class or factory.",
        ],
        [
            "hostname",
            None,
            None,
            "Server name in the greeting, replies and Received: headers "
            "[default: this host's name].",
        ],
        [
            "maildir",
            None,
            "Maildir",
            "Maildir folder of the Maildir handler (created if missing).",
        ],
        [
            "chunk-size",
            None,
            "64K",
            "Largest BODY chunk handed to the handler (bytes; K/M suffixes).",
        ],
        [
            "max-message-size",
            None,
            "32M",
            "Largest message accepted, advertised as SIZE (bytes; K/M/G "
            "suffixes; 0 for no limit).",
        ],
        [
            "log-level",
            None,
            "info",
            "Least severe esmtpkit event to log: debug (every reply), info "
            "(connections and messages), warn, error or critical.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, description: str) -> None:
        self["ports"].append(description)

    # usage.Options shows a method's docstring as its help, spaces and all.
    opt_port.__doc__ = (
        "Endpoint to listen on (tcp:, ssl:, unix:, haproxy:...), repeatable "
        f"[default: {DEFAULT_PORT}]."
    )

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = [DEFAULT_PORT]
        self["settings"] = self._settings()
        self["handlerFactory"] = self._handlerFactory()
        self._checkPorts()

    def _settings(self) -> Settings:
        values: dict[str, Any] = {}
        for option, name in (
            ("chunk-size", "chunkSize"),
            ("max-message-size", "maxMessageSize"),
        ):
            try:
                values[name] = _size(str(self[option]))
            except ValueError:
                raise usage.UsageError(
                    f"--{option}: {self[option]!r} is not a size such as 65536 or 64K"
                ) from None
        try:
            values["logLevel"] = LogLevel.levelWithName(str(self["log-level"]).lower())
        except InvalidLogLevelError:
            raise usage.UsageError(
                f"--log-level: {self['log-level']!r} is not one of "
                "debug, info, warn, error, critical"
            ) from None
        if self["hostname"]:
            values["hostname"] = self["hostname"]
        try:
            return Settings(**values)
        except ValueError as e:
            name, _, problem = str(e).partition(": ")
            raise usage.UsageError(
                f"--{_OPTION_OF.get(name, name)}: {problem}"
            ) from None

    def _handlerFactory(self) -> Any:
        name = self["handler"]
        try:
            handler = namedAny(name)
        except (ImportError, AttributeError, ValueError) as e:
            raise usage.UsageError(
                f"--handler {name}: cannot import it ({e})"
            ) from None
        except Exception as e:
            raise usage.UsageError(
                f"--handler {name}: importing it failed: {type(e).__name__}: {e}"
            ) from None
        if inspect.isclass(handler):
            if not IESMTPHandler.implementedBy(handler):
                raise usage.UsageError(
                    f"--handler {name}: {handler.__name__} does not implement "
                    "esmtpkit.IESMTPHandler (subclass esmtpkit.ESMTPHandler)"
                )
            try:
                verifyClass(IESMTPHandler, handler)
            except Invalid as e:
                raise usage.UsageError(f"--handler {name}: {e}") from None
        elif not callable(handler):
            raise usage.UsageError(
                f"--handler {name}: not a class or callable but {handler!r}"
            )
        fromOptions = getattr(handler, "fromOptions", None)
        if fromOptions is None:
            return handler
        try:
            return fromOptions(self)
        except usage.UsageError:
            raise
        except Exception as e:
            raise usage.UsageError(f"--handler {name}: {e}") from None

    def _checkPorts(self) -> None:
        from twisted.internet import reactor

        from .proxy import proxyServerFromString

        for description in self["ports"]:
            try:
                proxyServerFromString(reactor, description)
            except Exception as e:
                raise usage.UsageError(
                    f"--port {description}: {type(e).__name__}: {e}"
                ) from None


def makeService(options: Options) -> IService:
    """
    The service that C{twistd esmtpkit} runs.
    """
    return ESMTPService(
        options["handlerFactory"], options["ports"], options["settings"]
    )
