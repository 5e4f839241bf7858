"""
L{ServerContext}: what the connections of one server share, handed to each
connection when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..core.events import ServerEvents
    from ..io.batch import OutputBatch
    from ..security.auth import Authenticator
    from ..security.tls import ServerTLS
    from ..settings import Settings
    from .idle import IdleTimer
    from .limits import ConnectionLimits

__all__ = ["ServerContext"]


@dataclass(frozen=True, slots=True)
class ServerContext:
    """
    The collaborators of every connection of one server.

    @ivar handlerFactory: called once per connection for its handler.
    @ivar settings: the server's L{Settings}.
    @ivar clock: the time source of every timeout.
    @ivar events: the observers of the server's events.
    @ivar limits: the open connections and the limits on them.
    @ivar idleTimer: times out silent connections.
    @ivar output: writes the replies of a reactor turn together.
    @ivar tls: certificates for STARTTLS, or L{None} (not offered).
    @ivar authenticator: checks AUTH credentials, or L{None} (not offered).
    """

    handlerFactory: Callable[[], Any]
    settings: Settings
    clock: IReactorTime
    events: ServerEvents
    limits: ConnectionLimits
    idleTimer: IdleTimer
    output: OutputBatch
    tls: ServerTLS | None = None
    authenticator: Authenticator | None = None
