"""
The replies of every connection of a factory, written together at the end
of a reactor turn.

A reply written the moment it is made costs a wake-up of the client for
each write: on loopback, and more so between the cores of a virtual machine,
that wake-up is most of the price of a short reply. Written one after
another once the turn has handled every socket that was ready, the replies
reach clients that are mostly still awake from the first, and each client
finds several of its sockets ready at once. (Scenario A of the benchmark,
50 sessions of 1 KiB messages: 11,759 msg/s written at once, 13,269 written
at the end of the turn.)
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Sender(Protocol):
    """
    A connection whose output an L{OutputBatch} writes.
    """

    def flush(self) -> None:
        """
        Write the output collected so far.
        """


class OutputBatch:
    """
    The connections with output waiting for the end of the reactor turn.
    """

    __slots__ = ("_waiting", "_call")

    def __init__(self) -> None:
        self._waiting: dict[Sender, None] = {}
        self._call: IDelayedCall | None = None

    def add(self, sender: Sender, reactor: IReactorTime) -> None:
        """
        Call C{sender.flush()} once this turn of C{reactor} is over
        (once, however often it is added before then).
        """
        self._waiting[sender] = None
        if self._call is None:
            self._call = reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, {}
        for sender in waiting:
            sender.flush()
