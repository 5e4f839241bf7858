"""
Milters in front of the handler that takes the mail, as Postfix's
C{smtpd_milters} stand in front of its queue: a L{Chain
<esmtpkit.handlers.Chain>} of a L{MilterFilter} per milter, in order, then
the handler inside a L{DiscardGate}.

The chain's rules do the rest: a milter that lets a command through has no
opinion, so the next milter and then the handler answer; a refusal decides
at once. A message a milter discards must be answered 250 without being
delivered, which a chain cannot say (an acceptance never skips the
handlers after it): the milter marks the transaction on the connection's
L{MessageFate}, and the gate answers that EOM itself and gives the
handler ABORT instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from ..handler import skippableFor
from ..handlers.chain import Chain
from ..interfaces import IESMTPHandler
from ..reply import Reply
from .connector import MilterConnector
from .filter import MessageFate, MilterFilter

__all__ = ["DiscardGate", "withMilters"]


@implementer(IESMTPHandler)
class DiscardGate:
    """
    A handler as it is, except at the end of a message a milter discarded:
    then it gets ABORT, and the client 250.

    @ivar handler: the handler behind the gate.
    @ivar fate: shared with the connection's L{MilterFilter}s.
    """

    log = Logger()

    def __init__(self, handler: Any, fate: MessageFate) -> None:
        self.handler = handler
        self.fate = fate

    @property
    def session(self) -> Any:
        return self.handler.session

    @session.setter
    def session(self, session: Any) -> None:
        self.handler.session = session

    @property
    def disconnect(self) -> bool:
        return bool(self.handler.disconnect)

    @disconnect.setter
    def disconnect(self, value: bool) -> None:
        self.handler.disconnect = value

    def skippableHooks(self) -> frozenset[str]:
        return skippableFor(self.handler)

    def __getattr__(self, name: str) -> Any:
        # Every hook but EOM is the handler's own.
        return getattr(self.handler, name)

    def EOM(self) -> Any:
        transaction = self.handler.session.transaction
        if transaction is None or self.fate.discarded != transaction.id:
            return self.handler.EOM()
        self.fate.discarded = None
        reply = Reply(
            250, f"Message accepted for delivery as {transaction.id}", enhanced="2.0.0"
        )
        aborted = self.handler.ABORT()
        if isinstance(aborted, Deferred) or hasattr(aborted, "send"):
            return ensureDeferred(aborted).addBoth(lambda _: reply)
        return reply


def withMilters(
    connectors: Sequence[MilterConnector], handlerFactory: Callable[[], Any]
) -> Callable[[], Chain]:
    """
    A handler factory: for each connection, a L{Chain} of a L{MilterFilter}
    for each of C{connectors}, in order, then the handler
    C{handlerFactory} makes (behind a L{DiscardGate}).
    """

    def build() -> Chain:
        fate = MessageFate()
        filters = [MilterFilter(connector, fate) for connector in connectors]
        return Chain([*filters, DiscardGate(handlerFactory(), fate)])

    return build
