"""
The clocks behind L{esmtpkit.testing}'s test connections: L{DrivenClock},
the fake clock a test connection makes for itself, and L{ServerClock}, the
server side's view of a test connection's clock, which tells the server's
own timers from the handler's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from .threads import ThreadRunner, runInline, runningWith

__all__ = ["DrivenClock", "ServerClock"]


class DrivenClock(Clock):
    """
    The clock a test connection makes for itself: its C{advance} runs what
    handlers defer to threads with the connection's thread runner, as the
    connection's own calls do.
    """

    threadRunner: ThreadRunner = runInline

    def advance(self, amount: float) -> None:
        with runningWith(self.threadRunner):
            super().advance(amount)


@implementer(IReactorTime)
class ServerClock:
    """
    The server side's view of a test connection's clock: the same time and
    the same delayed calls, but every call the server schedules through it
    (its timeouts and deadlines) is noted, so that the test connection can
    tell them from the handler's own timers.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: set[IDelayedCall] = set()

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> IDelayedCall:
        call = self._clock.callLater(delay, f, *args, **kw)
        self._calls = {c for c in self._calls if c.active()}
        self._calls.add(call)
        return call

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()

    def isServerCall(self, call: IDelayedCall) -> bool:
        """
        Whether the server scheduled C{call} (rather than the handler).
        """
        return call in self._calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clock, name)
