"""
L{RequestDeadline}: the time a client has to send the content of one
request (DATA, or one BDAT chunk), so that one trickling bytes cannot hold
a connection (Postfix's smtpd_min_data_rate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ..core.hooks import HookRunner

__all__ = ["RequestDeadline"]


class RequestDeadline:
    """
    C{timeout} seconds for a request's content, extended by one second per
    C{rate} bytes that arrive and by the time the server's own hooks take.

    One timer per connection, moved rather than made anew for each request
    (moving a timer later costs next to nothing).

    @ivar due: when the deadline passes, 0 when there is none.
    """

    __slots__ = ("due", "_call", "_clock", "_timeout", "_rate", "_hooks", "_expired")

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        rate: int,
        hooks: HookRunner,
        expired: Callable[[], None],
    ) -> None:
        """
        @param hooks: while a hook is pending, the client is not to blame.
        @param expired: called once the deadline has passed.
        """
        self.due = 0.0
        self._call: IDelayedCall | None = None
        self._clock = clock
        self._timeout = timeout
        self._rate = rate
        self._hooks = hooks
        self._expired = expired

    def start(self) -> None:
        """
        A request's content begins now (no deadline without a rate).
        """
        if not self._rate:
            return
        clock, timeout = self._clock, self._timeout
        self.due = clock.seconds() + timeout
        call = self._call
        if call is not None and call.active():
            call.reset(timeout)
        else:
            self._call = clock.callLater(timeout, self._check)

    def extend(self, size: int) -> None:
        """
        C{size} bytes arrived.
        """
        if self.due:
            self.due += size / self._rate

    def hold(self, seconds: float) -> None:
        """
        The server, not the client, used C{seconds} (a slow hook).
        """
        if self.due:
            self.due += seconds

    def stop(self) -> None:
        """
        The request is over (its timer is left to be moved by the next
        request, or to find nothing to do).
        """
        self.due = 0.0

    def cancel(self) -> None:
        """
        The connection is over.
        """
        self.due = 0.0
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        self._call = None
        if not self.due:
            return  # the request ended in time
        clock = self._clock
        now = clock.seconds()
        if now < self.due:
            self._call = clock.callLater(self.due - now, self._check)
            return
        if self._hooks.pending is not None:
            self.due = now + 1.0
            self._call = clock.callLater(1.0, self._check)
            return
        self.due = 0.0
        self._expired()
