"""
L{MilterConnector}: where a milter listens and how to reach it, in
Postfix's spelling (C{inet:HOST:PORT}, C{unix:PATH}) or as a Twisted
client endpoint string (C{tcp:host=...:port=...}, C{unix:path=...}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory

from .client import MilterClient

__all__ = ["MilterConnector", "milterEndpoint", "DEFAULT_ACTIONS"]

#: What C{--milter-default-action} may say.
DEFAULT_ACTIONS = ("tempfail", "accept", "reject")


def milterEndpoint(
    reactor: Any, description: str, timeout: float = 30.0
) -> IStreamClientEndpoint:
    """
    The client endpoint for milter address C{description}.

    @raise ValueError: C{description} names no endpoint.
    """
    kind, colon, rest = description.partition(":")
    if not colon or not rest:
        raise ValueError(f"{description!r} is not inet:HOST:PORT or unix:PATH")
    if kind == "inet" or kind == "inet6":
        host, colon, port = rest.rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ValueError(f"{description!r} is not inet:HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if ":" in host:
            return TCP6ClientEndpoint(reactor, host, int(port), timeout=timeout)
        return TCP4ClientEndpoint(reactor, host, int(port), timeout=timeout)
    if kind in ("unix", "local") and "=" not in rest:
        return UNIXClientEndpoint(reactor, rest, timeout=timeout)
    try:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
        return endpoint
    except Exception as e:
        raise ValueError(f"{description!r}: {e}") from None


class MilterConnector:
    """
    Opens connections to one milter, a new one for each SMTP session (as
    Postfix does).

    @ivar description: the milter's address as given.
    @ivar defaultAction: what to answer when the milter cannot be reached,
        times out or breaks the protocol: C{"tempfail"} (451 4.7.1),
        C{"accept"} (go on without it) or C{"reject"} (550 5.7.1).
    """

    def __init__(
        self,
        description: str,
        reactor: Any = None,
        connectTimeout: float = 30.0,
        commandTimeout: float = 30.0,
        contentTimeout: float = 300.0,
        defaultAction: str = "tempfail",
        daemonName: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        if defaultAction not in DEFAULT_ACTIONS:
            raise ValueError(
                f"default action {defaultAction!r} is not one of "
                + ", ".join(DEFAULT_ACTIONS)
            )
        for name, value in (
            ("connect", connectTimeout),
            ("command", commandTimeout),
            ("content", contentTimeout),
        ):
            if value < 0:
                raise ValueError(f"{name} timeout {value} is negative")
        self.reactor = reactor
        self.description = description
        self.endpoint = milterEndpoint(reactor, description, connectTimeout)
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.contentTimeout = contentTimeout
        self.defaultAction = defaultAction
        self.daemonName = daemonName

    def __repr__(self) -> str:
        return f"MilterConnector({self.description!r})"

    def connect(self) -> Deferred[MilterClient]:
        """
        Connect and negotiate: fires with the ready L{MilterClient}, or
        fails (the milter is down, or did not negotiate in time).
        """
        factory = Factory.forProtocol(
            lambda: MilterClient(
                self.reactor,
                self.commandTimeout,
                self.contentTimeout,
                name=self.description,
            )
        )
        factory.noisy = False
        connecting = self.endpoint.connect(factory)
        if self.connectTimeout:
            connecting.addTimeout(self.connectTimeout, self.reactor)

        def negotiating(client: IProtocol) -> Deferred[MilterClient]:
            assert isinstance(client, MilterClient)
            return client.ready

        return connecting.addCallback(negotiating)
