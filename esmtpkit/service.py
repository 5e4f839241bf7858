"""
Running esmtpkit from Twisted code: L{ESMTPService} listens on any number of
endpoint descriptions with one L{ESMTPFactory}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService

from .factory import ESMTPFactory, HandlerFactory
from .proxy import proxyServerFromString
from .settings import Settings

__all__ = ["ESMTPService", "DEFAULT_PORT"]

DEFAULT_PORT = "tcp:2525:interface=127.0.0.1"


class ESMTPService(MultiService):
    """
    An SMTP server as a Twisted service: start it (or give it to an
    C{Application}) and it listens on every endpoint in C{ports}.

        from twisted.application.service import Application
        from esmtpkit import ESMTPService

        application = Application("mail")
        ESMTPService(MyHandler, ["tcp:2525"], hostname="mx.example.org"
                     ).setServiceParent(application)

    @ivar factory: the L{ESMTPFactory} shared by all endpoints.
    """

    def __init__(
        self,
        handlerFactory: HandlerFactory,
        ports: Iterable[str] = (DEFAULT_PORT,),
        settings: Settings | None = None,
        *,
        reactor: Any = None,
        **overrides: Any,
    ) -> None:
        """
        @param handlerFactory: a handler class, or a callable returning one
            new handler per connection.
        @param ports: endpoint descriptions (C{tcp:25}, C{ssl:465:...},
            C{unix:/path}, C{haproxy:tcp:2525}, ...); behind C{haproxy:} the
            session starts once the PROXY header has been read, with the
            client's address.
        @param settings: L{Settings}; keyword C{overrides} replace fields.
        @param reactor: the reactor to listen with; the global one by default.
        """
        super().__init__()
        self.factory = ESMTPFactory(
            handlerFactory,
            settings,
            clock=reactor,
            **overrides,
        )
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        for description in ports:
            endpoint = proxyServerFromString(reactor, description)
            StreamServerEndpointService(endpoint, self.factory).setServiceParent(self)
