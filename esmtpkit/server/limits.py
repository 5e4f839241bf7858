"""
L{ConnectionLimits}: the open connections of a server, and the limits on
how many there may be at once, in all and from one address; and, for a
graceful shutdown (L{Drain <esmtpkit.server.drain.Drain>}), the connections
lost whose hooks have not finished yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress

from ..reply import Reply

if TYPE_CHECKING:
    from ..settings import Settings
    from .drain import Drain

__all__ = ["ConnectionLimits"]


class ConnectionLimits:
    """
    The open connections (the keys of L{connections}, in the order they
    opened) and their count per peer address.

    @ivar connections: the open connections.
    @ivar ending: the connections lost whose conversation has not closed
        yet (a hook in flight, then ABORT and DISCONNECT, to finish).
    @ivar drain: the L{Drain} under way, or L{None}: it is told when the
        last connection has ended, and new connections are refused.
    """

    __slots__ = (
        "connections",
        "ending",
        "drain",
        "_settings",
        "_perPeer",
        "_addresses",
    )

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # A dict used as an insertion-ordered set: at 10,000 connections a
        # dict takes 29 bytes per entry, a set 52.
        self.connections: dict[Any, str] = {}  # to the peer counted
        self.ending: dict[Any, None] = {}
        self.drain: Drain | None = None
        self._perPeer: dict[str, int] = {}
        self._addresses: dict[IAddress, IAddress] = {}

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

    def opened(self, connection: Any) -> tuple[str, Reply] | None:
        """
        Register a new connection (with a C{session}); return the limit it
        is over and the reply that refuses it, or L{None}.
        """
        settings = self._settings
        peer = connection.session.peerHost
        # The peer is kept: a face may learn the client's address later (a
        # milter's session gets it from the MTA), and must not move counts.
        self.connections[connection] = peer
        count = self._perPeer[peer] = self._perPeer.get(peer, 0) + 1
        host = settings.hostname
        if self.drain is not None:
            return "shutdown", Reply(
                421, f"{host} Service shutting down", enhanced="4.3.2"
            )
        if settings.maxConnections and len(self.connections) > settings.maxConnections:
            return "connections", Reply(
                421, f"{host} Too many connections, try again later", enhanced="4.7.0"
            )
        if (
            settings.maxConnectionsPerPeer
            and count > settings.maxConnectionsPerPeer
            and not settings.isExempt(peer)
        ):
            return "connections-per-ip", Reply(
                421, f"{host} Too many connections from your address", enhanced="4.7.0"
            )
        return None

    def closed(self, connection: Any) -> bool:
        """
        Forget a connection that is lost (it is L{ending} until L{ended});
        returns whether none is left open.
        """
        if connection in self.connections:
            peer = self.connections.pop(connection)
            self.ending[connection] = None
            count = self._perPeer.get(peer, 0) - 1
            if count > 0:
                self._perPeer[peer] = count
            else:
                self._perPeer.pop(peer, None)
        return not self.connections

    def ended(self, connection: Any) -> None:
        """
        The conversation of a lost connection has closed (DISCONNECT is
        over).
        """
        self.ending.pop(connection, None)
        drain = self.drain
        if drain is not None and not self.connections and not self.ending:
            drain.finished()
