"""
L{Drain}: the graceful shutdown of one server's connections.

The listeners are stopped by whoever starts the drain (L{ESMTPService
<esmtpkit.ESMTPService>}); the drain then asks every open connection to
close as soon as it is idle (L{SMTPConnection.drain
<esmtpkit.smtp.connection.SMTPConnection.drain>}: 421 4.3.2 at once for an
idle session, right after the reply that ends its transaction for a busy
one), refuses connections that still arrive (a PROXY header read late),
and at the deadline closes whatever is left (L{SMTPConnection.shutdown
<esmtpkit.smtp.connection.SMTPConnection.shutdown>}: 421 4.3.2, the hook in
flight cancelled and its answer ignored, ABORT). It is over when every
connection is gone and every conversation has closed (DISCONNECT
included), or, at the latest, L{GRACE} seconds after the deadline, when
the connections still there (a client that does not read its 421) are
aborted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.logger import Logger

    from .limits import ConnectionLimits

__all__ = ["Drain", "GRACE"]

GRACE = 2.0
"""
Seconds after the deadline for the last 421s to be written and the last
ABORT and DISCONNECT hooks to finish, before the drain is over anyway.
"""


class Drain:
    """
    Shuts the connections of one server (one L{ConnectionLimits}) down
    gracefully.

    @ivar timeout: seconds the transactions in flight get to finish.
    @ivar expired: whether the deadline has passed (or L{expire} was
        called).
    @ivar done: whether the drain is over.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        clock: IReactorTime,
        timeout: float,
        log: Logger | None = None,
        grace: float = GRACE,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self.timeout = timeout
        self._log = log
        self._grace = grace
        self.expired = False
        self.done = False
        self._waiting: list[Deferred[None]] = []
        self._call: IDelayedCall | None = None

    def start(self) -> Deferred[None]:
        """
        Start draining: new connections are refused, every open one closes
        once idle, and the deadline is set.

        @return: a Deferred that fires (with L{None}) when the drain is over.
        """
        limits = self._limits
        if limits.drain is not None:
            return limits.drain.wait()
        limits.drain = self
        busy = len(limits.connections) + len(limits.ending)
        if busy and self._log is not None:
            self._log.info(
                "esmtpkit shutting down: draining {count} connection(s), "
                "deadline in {timeout} s",
                count=busy,
                timeout=self.timeout,
            )
        for connection in list(limits.connections):
            connection.drain()
        result = self.wait()
        if not self.done:
            if limits.connections or limits.ending:
                self._call = self._clock.callLater(self.timeout, self.expire)
            else:
                self.finished()
        return result

    def wait(self) -> Deferred[None]:
        """
        A Deferred that fires when the drain is over.
        """
        if self.done:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def expire(self) -> None:
        """
        The deadline: every connection still open, or still finishing its
        hooks, is closed now (L{SMTPConnection.shutdown
        <esmtpkit.smtp.connection.SMTPConnection.shutdown>}).
        """
        if self.expired or self.done:
            return
        self.expired = True
        self._cancelCall()
        limits = self._limits
        left = list(limits.connections) + list(limits.ending)
        if self._log is not None and left:
            self._log.warn(
                "esmtpkit shutdown deadline: closing {count} busy "
                "connection(s), their transactions aborted",
                count=len(left),
            )
        for connection in left:
            connection.shutdown()
        if not self.done:
            self._call = self._clock.callLater(self._grace, self._giveUp)

    def _giveUp(self) -> None:
        self._call = None
        for connection in list(self._limits.connections):
            transport: Any = connection.transport
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()
        self.finished()

    def finished(self) -> None:
        """
        Every connection has ended (told by the limits), or the grace
        period after the deadline is over: the drain is done.
        """
        if self.done:
            return
        self.done = True
        self._cancelCall()
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.callback(None)

    def _cancelCall(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
