"""
L{ESMTPFactory}: builds an L{ESMTPProtocol} (or an L{LMTPProtocol}) per
connection, with the collaborators every connection of one server shares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import ILogObserver, globalLogPublisher

from ..core.events import LogObserver, ServerEvents, ServerObserver
from ..io.batch import OutputBatch
from ..security.auth import Authenticator
from ..security.tls import ServerTLS
from ..settings import Settings
from ..smtp.connection import SMTPConnection
from ..smtp.lmtp import LMTP_SETTINGS, LMTPProtocol
from ..smtp.protocol import ESMTPProtocol
from .context import ServerContext
from .drain import Drain
from .idle import IdleTimer
from .limits import ConnectionLimits
from .log import LevelLogger

__all__ = ["ESMTPFactory", "LMTPFactory", "HandlerFactory"]

HandlerFactory = Callable[[], Any]
"""
Anything that, called with no arguments, returns a new
L{IESMTPHandler <esmtpkit.IESMTPHandler>}: usually the handler class.
"""


class ESMTPFactory(ServerFactory):
    """
    A factory for SMTP server connections; give it to any stream endpoint
    (C{tcp:}, C{ssl:}, C{unix:}, C{haproxy:}, ...).

        >>> factory = ESMTPFactory(MyHandler, hostname="mx.example.org")
        >>> endpoint.listen(factory)

    @ivar context: the L{ServerContext} every connection gets.
    @ivar settings: the L{Settings} of every connection.
    @ivar clock: the reactor (or L{Clock <twisted.internet.task.Clock>})
        used for timeouts.
    @ivar log: the L{LevelLogger} of the server's log, filtered at
        C{settings.logLevel}.
    @ivar events: the server's L{ServerEvents}: the log, then the
        C{observers} given.
    @ivar tls: the L{ServerTLS}, or L{None}.
    @ivar authenticator: the L{Authenticator} over the AUTH portal, or
        L{None}.
    @ivar draining: the L{Drain} of L{drain}, or L{None} before it.
    """

    protocol: type[SMTPConnection] = ESMTPProtocol
    requiredSettings: dict[str, Any] = {}
    """Settings the wire requires, whatever the caller gives."""

    def __init__(
        self,
        handlerFactory: HandlerFactory,
        settings: Settings | None = None,
        *,
        clock: IReactorTime | None = None,
        logObserver: ILogObserver | None = None,
        tls: ServerTLS | None = None,
        portal: Portal | None = None,
        observers: Iterable[ServerObserver] = (),
        events: ServerEvents | None = None,
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
            (see L{esmtpkit.security.auth.makePortal}); without it AUTH is
            not offered. Its avatars must be identities (user names).
        @param observers: L{ServerObserver}s of the server's events, told
            after the log.
        @param events: the L{ServerEvents} to share with other factories
            (an SMTP and an LMTP listener of one server); C{observers} and
            C{logObserver} are then ignored.
        """
        if not callable(handlerFactory):
            raise TypeError(f"{handlerFactory!r} is not callable")
        self.handlerFactory = handlerFactory
        self.settings = replace(
            settings or Settings(), **{**overrides, **self.requiredSettings}
        )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.log = LevelLogger(
            self.settings.logLevel,
            namespace="esmtpkit",
            observer=logObserver if logObserver is not None else globalLogPublisher,
        )
        if events is None:
            events = ServerEvents(
                [LogObserver(self.log, self.settings.logLevel), *observers]
            )
        self.events = events
        self.tls = tls
        self.authenticator = Authenticator(portal) if portal is not None else None
        limits = ConnectionLimits(self.settings)
        self.context = ServerContext(
            handlerFactory=handlerFactory,
            settings=self.settings,
            clock=clock,
            events=events,
            limits=limits,
            idleTimer=IdleTimer(clock, self.settings.idleTimeout, limits.connections),
            output=OutputBatch(),
            tls=tls,
            authenticator=self.authenticator,
        )
        self.draining: Drain | None = None

    @property
    def connections(self) -> dict[SMTPConnection, str]:
        """
        The open connections (the keys of a dict, in the order they opened;
        each to the peer address it counts for).
        """
        return self.context.limits.connections

    def drain(self, timeout: float | None = None) -> Deferred[None]:
        """
        Shut this factory's connections down gracefully (stop its listeners
        first): idle sessions get 421 4.3.2 and are closed at once, busy
        ones as soon as their transaction ends; after C{timeout} seconds
        (C{settings.shutdownTimeout} by default) every connection left gets
        421 4.3.2 and is closed, its transaction aborted. Connections made
        from now on are refused with 421 4.3.2.

        @return: a Deferred that fires when every connection is gone and
            its DISCONNECT hook has run (or a few seconds after the
            deadline at the latest). A second call returns another
            Deferred for the same drain.
        """
        if self.draining is None:
            if timeout is None:
                timeout = self.settings.shutdownTimeout
            self.draining = Drain(
                self.context.limits, self.clock, timeout, log=self.log
            )
            return self.draining.start()
        return self.draining.wait()

    def buildProtocol(self, addr: IAddress | None) -> SMTPConnection:
        protocol = self.protocol(self.context)
        protocol.factory = self
        return protocol


class LMTPFactory(ESMTPFactory):
    """
    A factory for LMTP (RFC 2033) server connections: the same handlers,
    settings and options as L{ESMTPFactory}.
    """

    protocol = LMTPProtocol
    requiredSettings = LMTP_SETTINGS
