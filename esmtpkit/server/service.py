"""
Running esmtpkit from Twisted code: L{ESMTPService} listens on any number of
endpoint descriptions with one L{ESMTPFactory}.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from ..security.tls import ServerTLS
from ..settings import Settings
from .endpoints import serverFromDescription, splitWire
from .factory import ESMTPFactory, HandlerFactory, LMTPFactory
from .listeners import ListenerService, listenAll
from .workers import AdoptedPortService, ParentWatchService

__all__ = ["ESMTPService", "DEFAULT_PORT"]

DEFAULT_PORT = "tcp:2525:interface=127.0.0.1"

log = Logger(namespace="esmtpkit")


class ESMTPService(MultiService):
    """
    An SMTP server as a Twisted service: start it (or give it to an
    C{Application}) and it listens on every endpoint in C{ports}.

        from twisted.application.service import Application
        from esmtpkit import ESMTPService

        application = Application("mail")
        ESMTPService(MyHandler, ["tcp:2525"], hostname="mx.example.org"
                     ).setServiceParent(application)

    @ivar factory: the L{ESMTPFactory} shared by all SMTP endpoints.
    @ivar lmtpFactory: the L{LMTPFactory} of the C{lmtp:} endpoints (with
        the same settings and observers), or L{None} if there are none.
    @ivar milterFactory: the L{MilterFactory
        <esmtpkit.milter.factory.MilterFactory>} of the C{milter:} endpoints,
        or L{None} if there are none.

    L{stopService} shuts down gracefully: the listeners stop at once, then
    every factory's connections are drained (L{ESMTPFactory.drain}) within
    C{settings.shutdownTimeout}; its Deferred fires when that is over.
    """

    def __init__(
        self,
        handlerFactory: HandlerFactory,
        ports: Iterable[str] = (DEFAULT_PORT,),
        settings: Settings | None = None,
        *,
        reactor: Any = None,
        tls: ServerTLS | None = None,
        portal: Portal | None = None,
        reloadOnSIGHUP: bool | None = None,
        inherited: Sequence[tuple[int, str]] = (),
        handleSIGTERM: bool = False,
        **overrides: Any,
    ) -> None:
        """
        @param handlerFactory: a handler class, or a callable returning one
            new handler per connection.
        @param ports: endpoint descriptions (C{tcp:25}, C{ssl:465},
            C{unix:/path}, C{haproxy:tcp:2525}, ...); C{ssl:} without
            C{privateKey=} uses C{tls}; behind C{haproxy:} the session starts
            once the PROXY header has been read, with the client's address;
            C{lmtp:} before any of them serves LMTP there instead of SMTP
            (C{lmtp:unix:/run/lmtp.sock}), C{milter:} the milter protocol
            (C{milter:tcp:8890:interface=127.0.0.1}).
        @param settings: L{Settings}; keyword C{overrides} replace fields.
        @param reactor: the reactor to listen with; the global one by default.
        @param tls: certificates for STARTTLS and implicit TLS.
        @param portal: the L{twisted.cred} portal for AUTH.
        @param reloadOnSIGHUP: while running, reload the TLS files (and
            checkers that can reload, such as SCRAM files) on SIGHUP; by
            default, when there is something to reload.
        @param inherited: listening sockets inherited from a C{--workers}
            supervisor, as C{(file descriptor, port description)} pairs.
        @param handleSIGTERM: while running, take SIGTERM: the first stops
            the reactor (so that the process exits with status 0 once the
            drain is over, instead of with the signal), a second one while
            draining reaches the deadline at once. C{twistd esmtpkit} turns
            it on; by default the program's own handler (Twisted's) stays.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self.factory = ESMTPFactory(
            handlerFactory, settings, clock=reactor, tls=tls, portal=portal, **overrides
        )
        self.lmtpFactory: LMTPFactory | None = None
        wires = [splitWire(d)[0] for d in ports] + [
            splitWire(d)[0] for _, d in inherited
        ]
        if "lmtp" in wires:
            self.lmtpFactory = LMTPFactory(
                handlerFactory,
                self.factory.settings,
                clock=reactor,
                tls=tls,
                portal=portal,
                events=self.factory.events,
            )
        self.milterFactory: ESMTPFactory | None = None
        if "milter" in wires:
            from ..milter.factory import MilterFactory

            self.milterFactory = MilterFactory(
                handlerFactory,
                self.factory.settings,
                clock=reactor,
                events=self.factory.events,
            )
        self._reloadOnSIGHUP = (
            reloadOnSIGHUP
            if reloadOnSIGHUP is not None
            # Workers always take SIGHUP: the supervisor passes it on.
            else tls is not None or portal is not None or bool(inherited)
        )
        self._previousHandler: Any = None
        self._handleSIGTERM = handleSIGTERM
        self._previousTERM: Any = None
        for description in ports:
            wire, rest = splitWire(description)
            endpoint = serverFromDescription(reactor, rest, tls)
            ListenerService(
                endpoint, self._factoryFor(wire), description
            ).setServiceParent(self)
        for fd, description in inherited:
            AdoptedPortService(
                fd,
                description,
                self._factoryFor(splitWire(description)[0]),
                tls,
                reactor,
            ).setServiceParent(self)
        if inherited:
            ParentWatchService(reactor).setServiceParent(self)

    def listen(self) -> None:
        """
        Open every listening socket now, before the service starts (which
        would open them otherwise); they accept connections once it has
        started. C{twistd esmtpkit} calls this before it forks.

        @raise esmtpkit.server.listeners.CannotListen: one cannot be opened
            (the others opened are closed again).
        """
        listenAll(s for s in self if isinstance(s, ListenerService))

    def factories(self) -> list[ESMTPFactory]:
        """
        The service's factories: L{factory}, then L{lmtpFactory} and
        L{milterFactory} if any.
        """
        extra = [f for f in (self.lmtpFactory, self.milterFactory) if f is not None]
        return [self.factory, *extra]

    def _factoryFor(self, wire: str) -> ESMTPFactory:
        if wire == "lmtp":
            assert self.lmtpFactory is not None
            return self.lmtpFactory
        if wire == "milter":
            assert self.milterFactory is not None
            return self.milterFactory
        return self.factory

    def reload(self) -> None:
        """
        Read the TLS files and reloadable credential files again.
        """
        if self.factory.tls is not None:
            self.factory.tls.reload()
        authenticator = self.factory.authenticator
        if authenticator is not None:
            for checker in set(authenticator.portal.checkers.values()):
                reload = getattr(checker, "reload", None)
                if reload is None:
                    continue
                try:
                    reload()
                except Exception as e:
                    log.error("credentials not reloaded: {error}", error=e)

    def startService(self) -> None:
        super().startService()
        if self._reloadOnSIGHUP and hasattr(signal, "SIGHUP"):
            try:
                self._previousHandler = signal.signal(signal.SIGHUP, self._onSIGHUP)
            except ValueError:  # not the main thread
                self._reloadOnSIGHUP = False
        if self._handleSIGTERM:
            # Once the reactor runs: it installs its own handler as it starts.
            self._reactor.callWhenRunning(self._takeSIGTERM)

    def _takeSIGTERM(self) -> None:
        if not self.running or not self._handleSIGTERM:
            return
        try:
            self._previousTERM = signal.signal(signal.SIGTERM, self._onSIGTERM)
        except ValueError:  # not the main thread
            self._handleSIGTERM = False

    def stopService(self) -> Deferred[None]:
        """
        Stop listening at once, then drain every factory's connections.

        @return: a Deferred that fires once the listeners are closed and
            every connection is gone (at the latest a few seconds after
            C{settings.shutdownTimeout}).
        """
        if self._reloadOnSIGHUP and hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._previousHandler or signal.SIG_DFL)
        listeners = super().stopService()
        drained = [factory.drain() for factory in self.factories()]
        done: Deferred[Any] = gatherResults([listeners, *drained])

        def over(result: object) -> None:
            if self._previousTERM is not None:
                signal.signal(signal.SIGTERM, self._previousTERM)
                self._previousTERM = None

        done.addBoth(over)
        return done

    def _onSIGTERM(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._terminate)

    def _terminate(self) -> None:
        if self.running:
            log.info("esmtpkit: SIGTERM, shutting down")
            try:
                self._reactor.stop()
            except ReactorNotRunning:
                pass
            return
        for factory in self.factories():
            if factory.draining is not None:
                factory.draining.expire()

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload)
