"""
L{ESMTPFactory}: builds an L{ESMTPProtocol} and a handler per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    globalLogPublisher,
)

from ..reply import Reply
from ..security.auth import Authenticator
from ..security.tls import ServerTLS
from ..settings import Settings
from ..smtp.protocol import ESMTPProtocol
from .idle import IdleTimer
from .output import OutputBatch

__all__ = ["ESMTPFactory", "HandlerFactory"]

HandlerFactory = Callable[[], Any]
"""
Anything that, called with no arguments, returns a new
L{IESMTPHandler <esmtpkit.IESMTPHandler>}: usually the handler class.
"""


_LEVELS = list(LogLevel.iterconstants())


def _ignore(*args: object, **kwargs: object) -> None:
    pass


class LevelLogger(Logger):
    """
    A L{Logger} that drops events below a level before building them, so
    that a quiet server pays next to nothing for the events it does not
    log.

    @ivar infoEnabled: whether C{info} events are logged (to skip even
        gathering the fields of a frequent one).
    """

    def __init__(self, level: LogLevel, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level
        self._lowest = _LEVELS.index(level)
        self.infoEnabled = self.enabled(LogLevel.info)
        # A level that is off costs one call that does nothing.
        for below in _LEVELS[: self._lowest]:
            setattr(self, below.name, _ignore)

    def enabled(self, level: LogLevel) -> bool:
        """
        Whether events of C{level} are logged.
        """
        return _LEVELS.index(level) >= self._lowest

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _LEVELS.index(level) >= self._lowest:
            super().emit(level, format, **kwargs)


class ESMTPFactory(ServerFactory):
    """
    A factory for SMTP server connections; give it to any stream endpoint
    (C{tcp:}, C{ssl:}, C{unix:}, C{haproxy:}, ...).

        >>> factory = ESMTPFactory(MyHandler, hostname="mx.example.org")
        >>> endpoint.listen(factory)

    @ivar handlerFactory: called once per connection for its handler.
    @ivar settings: the L{Settings} of every connection.
    @ivar clock: the reactor (or L{Clock <twisted.internet.task.Clock>})
        used for timeouts.
    @ivar log: the L{Logger} that connections log through, filtered at
        C{settings.logLevel}.
    @ivar connections: the open connections (the keys of a dict, in the order
        they opened).
    @ivar tls: the L{ServerTLS}, or L{None}.
    @ivar authenticator: the L{Authenticator} over the AUTH portal, or
        L{None}.
    """

    protocol = ESMTPProtocol

    def __init__(
        self,
        handlerFactory: HandlerFactory,
        settings: Settings | None = None,
        *,
        clock: IReactorTime | None = None,
        logObserver: ILogObserver | None = None,
        tls: ServerTLS | None = None,
        portal: Portal | None = None,
        **overrides: Any,
    ) -> None:
        """
        @param handlerFactory: a handler class, or any callable returning a
            new handler.
        @param settings: the server L{Settings}; keyword C{overrides} (any
            L{Settings} field, such as C{hostname=...}) replace fields of it.
        @param clock: the time source; the global reactor by default.
        @param logObserver: where log events go; the global log publisher
            by default.
        @param tls: certificates for STARTTLS and implicit TLS listeners;
            without them STARTTLS is not offered.
        @param portal: a L{twisted.cred} portal to check AUTH credentials
            (see L{esmtpkit.security.auth.makePortal}); without it AUTH is not
            offered. Its avatars must be identities (user names).
        """
        if not callable(handlerFactory):
            raise TypeError(f"{handlerFactory!r} is not callable")
        self.handlerFactory = handlerFactory
        self.settings = replace(settings or Settings(), **overrides)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.log = LevelLogger(
            self.settings.logLevel,
            namespace="esmtpkit",
            observer=logObserver if logObserver is not None else globalLogPublisher,
        )
        # A dict used as an insertion-ordered set: at 10,000 connections a
        # dict takes 29 bytes per entry, a set 52.
        self.connections: dict[ESMTPProtocol, None] = {}
        self.idleTimer = IdleTimer(clock, self.settings.idleTimeout, self.connections)
        self.ehloTails: dict[tuple[int, tuple[str, ...]], str] = {}
        self.tls = tls
        self.authenticator = Authenticator(portal) if portal is not None else None
        self._perPeer: dict[str, int] = {}
        self._addresses: dict[IAddress, IAddress] = {}
        self.output = OutputBatch()

    def sharedAddress(self, address: IAddress) -> IAddress:
        """
        One object for equal addresses: every connection to a listening
        port has the same local address, and need not keep its own copy.
        """
        addresses = self._addresses
        if len(addresses) >= 256:
            addresses.clear()
        try:
            return addresses.setdefault(address, address)
        except TypeError:  # not hashable
            return address

    def buildProtocol(self, addr: IAddress | None) -> ESMTPProtocol:
        return self.protocol(self)

    def connectionOpened(self, protocol: ESMTPProtocol) -> Reply | None:
        """
        Register a new connection; return the reply that refuses it when it
        is over the total or per-peer connection limit, else L{None}.
        """
        settings = self.settings
        peer = protocol.session.peerHost
        self.connections[protocol] = None
        count = self._perPeer[peer] = self._perPeer.get(peer, 0) + 1
        host = settings.hostname
        if settings.maxConnections and len(self.connections) > settings.maxConnections:
            return Reply(
                421, f"{host} Too many connections, try again later", enhanced="4.7.0"
            )
        if (
            settings.maxConnectionsPerPeer
            and count > settings.maxConnectionsPerPeer
            and not settings.isExempt(peer)
        ):
            return Reply(
                421, f"{host} Too many connections from your address", enhanced="4.7.0"
            )
        return None

    def connectionClosed(self, protocol: ESMTPProtocol) -> None:
        """
        Called by a connection once it is lost.
        """
        if protocol in self.connections:
            del self.connections[protocol]
            peer = protocol.session.peerHost
            count = self._perPeer.get(peer, 0) - 1
            if count > 0:
                self._perPeer[peer] = count
            else:
                self._perPeer.pop(peer, None)
            if not self.connections:
                self.idleTimer.stop()
