"""
The idle timeout of every connection of a factory, kept by one timer.

A timer per connection (L{TimeoutMixin}'s L{IDelayedCall}, its bound
methods and its place in the reactor's heap) costs about 450 bytes, more
than a sixth of an idle connection. Here a connection only records when its
silence began; one timer, due when the longest-silent connection runs out of
time, closes whoever is over the limit and sets itself for the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Idler(Protocol):
    """
    A connection watched by an L{IdleTimer}.

    @ivar idleSince: when the connection last heard from its client, or
        L{None} while its idle time does not count.
    """

    idleSince: float | None

    def timeoutConnection(self) -> None:
        """
        Silent for too long: say so and close.
        """


class IdleTimer:
    """
    Time out the connections that have been silent for C{timeout} seconds.

    A connection starts counting with L{start} (which arms the timer if it
    is not), restarts by setting C{idleSince} to the current time, and stops
    by setting it to L{None}. A timeout fires at the exact second when
    connections are few; when one fires within C{granularity} seconds of
    the previous one, it waits until C{granularity} seconds have passed, so
    that many connections cost at most one pass over them per
    C{granularity} seconds.
    """

    __slots__ = ("_clock", "_timeout", "_connections", "_granularity", "_call")

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        connections: Iterable[Idler],
        granularity: float = 1.0,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._connections = connections
        self._granularity = min(granularity, timeout)
        self._call: IDelayedCall | None = None

    def start(self, connection: Idler) -> None:
        """
        C{connection} is idle from now on.
        """
        now = self._clock.seconds()
        connection.idleSince = now
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._expire)

    def stop(self) -> None:
        """
        Disarm the timer: there are no connections left to watch.
        """
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _expire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        # A microsecond's slack: the timer set for when a connection's time
        # is up must find it up, whatever the rounding of the sums.
        cutoff = now - self._timeout + 1e-6
        oldest: float | None = None
        expired = []
        for connection in list(self._connections):
            since = connection.idleSince
            if since is None:
                continue
            if since <= cutoff:
                connection.idleSince = None
                expired.append(connection)
            elif oldest is None or since < oldest:
                oldest = since
        if oldest is not None:
            due = max(oldest + self._timeout - now, self._granularity)
            self._call = self._clock.callLater(due, self._expire)
        for connection in expired:
            connection.timeoutConnection()
