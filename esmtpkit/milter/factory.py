"""
L{MilterFactory}: serves any handler as a milter, one L{MilterConnection}
per connection from the MTA.
"""

from __future__ import annotations

from typing import Any

from ..server.factory import ESMTPFactory
from .server import PROGRESS_INTERVAL, MilterConnection

__all__ = ["MilterFactory"]


class MilterFactory(ESMTPFactory):
    """
    A factory for milter connections from an MTA: give it to any stream
    endpoint (C{tcp:PORT:interface=127.0.0.1}, C{unix:/path}). It takes the
    same handlers, settings and observers as L{ESMTPFactory}.

        >>> endpoint.listen(MilterFactory(MyHandler))

    @ivar progressInterval: seconds between SMFIR_PROGRESS packets while a
        hook keeps a reply waiting.
    """

    protocol = MilterConnection  # type: ignore[assignment]
    requiredSettings = {"maxConnectionsPerPeer": 0}
    """Every connection comes from the MTA: no limit per address."""

    def __init__(
        self,
        handlerFactory: Any,
        settings: Any = None,
        *,
        progressInterval: float = PROGRESS_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(handlerFactory, settings, **kwargs)
        self.progressInterval = progressInterval

    def buildProtocol(self, addr: Any) -> MilterConnection:  # type: ignore[override]
        protocol = MilterConnection(self.context, self.progressInterval)
        protocol.factory = self
        return protocol
