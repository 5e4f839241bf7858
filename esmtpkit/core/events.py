"""
What happens on a server, told to whoever listens: L{ServerObserver} is the
listener's side, L{ServerEvents} the server's.

Every face (SMTP, LMTP, and the milter faces to come) reports the same
events through one L{ServerEvents} per server. The log is one observer
(L{LogObserver}); metrics are another. An event nobody listens to costs an
attribute load and a loop over an empty tuple: the server asks for no
clock readings and builds nothing for it.

    class Counter(ServerObserver):
        def __init__(self):
            self.accepted = 0

        def transactionEnded(self, session, transaction, outcome, replies):
            if outcome == "accepted":
                self.accepted += 1

    factory = ESMTPFactory(MyHandler, observers=[Counter()])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from zope.interface import implementer

from ..interfaces import IServerObserver

if TYPE_CHECKING:
    from ..reply import Reply
    from ..session import Session, TLSInfo, Transaction

__all__ = [
    "ServerObserver",
    "ServerEvents",
    "LogObserver",
    "EVENTS",
    "OUTCOMES",
    "LIMITS",
]

OUTCOMES = ("accepted", "partial", "refused", "aborted")
"""
How a transaction ended (L{ServerObserver.transactionEnded}): every
recipient's reply 2xx, some (only where each recipient gets its own reply,
as in LMTP), none, or no end of message at all
(RSET, a new greeting, QUIT, the connection lost, or refused while its
content was being read).
"""

LIMITS = (
    "line-length",
    "header-size",
    "message-size",
    "recipients",
    "errors",
    "auth-failures",
    "idle-timeout",
    "data-rate",
    "hook-timeout",
    "sync",
)
"""
The names L{ServerObserver.limitReached} reports (the connection limits,
C{"connections"} and C{"connections-per-ip"}, are told by
L{ServerObserver.connectionRefused}).
"""


@implementer(IServerObserver)
class ServerObserver:
    """
    A listener for server events (L{IServerObserver}): subclass it and
    override the events you want. Only overridden methods are called
    (L{ServerEvents} looks), so the others cost nothing; L{wants} can turn
    off overridden ones too.

    Observers must not raise and must not block: they run inside the
    conversation. Sessions and transactions are live objects; copy what you
    keep.
    """

    def wants(self, event: str) -> bool:
        """
        Whether to call the overridden method C{event} (asked once, when the
        observer is added).
        """
        return True

    def connectionOpened(self, session: Session) -> None:
        """
        A client connected (behind C{haproxy:}, once its PROXY header was
        read); C{session.peer} is its address.
        """

    def connectionRefused(self, session: Session, limit: str, reply: Reply) -> None:
        """
        A connection over a connection limit (C{"connections"} or
        C{"connections-per-ip"}), or made while the server shuts down
        (C{"shutdown"}), got C{reply} and is closed.
        """

    def connectionClosed(self, session: Session) -> None:
        """
        The connection is gone and every hook has finished (DISCONNECT was
        the last).
        """

    def handlerFailed(self, session: Session, failure: Failure) -> None:
        """
        The handler factory raised, or built something that is not an
        L{IESMTPHandler <esmtpkit.IESMTPHandler>}; the client got 421.
        """

    def commandReplied(self, session: Session, verb: str, reply: Reply) -> None:
        """
        A reply went out: C{verb} is the command it answers (C{"CONNECT"}
        for the greeting, C{"EOM"} for the end of a message, C{"UNKNOWN"},
        ...). Under LMTP the end of a message has one such event per
        recipient.
        """

    def commandRefused(
        self, session: Session, verb: str, argument: str, reply: Reply
    ) -> None:
        """
        A 4xx or 5xx reply went out (just after its L{commandReplied}):
        C{verb} as there, except that the end of a message refused is
        also told by L{transactionEnded} or L{contentRefused}.

        @param argument: the command's text after the verb for MAIL, RCPT,
            HELO, EHLO and LHLO (the path or domain refused, with any
            parameters); empty for every other command (AUTH's can hold a
            secret).
        """

    def transactionStarted(self, session: Session, transaction: Transaction) -> None:
        """
        MAIL was accepted.
        """

    def contentRefused(
        self, session: Session, transaction: Transaction | None, reply: Reply
    ) -> None:
        """
        The message was refused while its content was read (a limit, a
        bare line ending, a content hook that refused or failed); C{reply}
        will answer its end. C{transactionEnded} follows with C{"aborted"}.
        """

    def transactionEnded(
        self,
        session: Session,
        transaction: Transaction,
        outcome: str,
        replies: Sequence[Reply],
    ) -> None:
        """
        The transaction is over; C{outcome} is one of L{OUTCOMES}.

        @param replies: after the end of a message, the reply for each
            recipient in order (under SMTP the one reply sent, for each);
            empty for C{"aborted"}.
        """

    def tlsStarted(self, session: Session) -> None:
        """
        The STARTTLS handshake begins (the 220 went out).
        """

    def tlsEstablished(self, session: Session, tls: TLSInfo) -> None:
        """
        A TLS handshake (STARTTLS or implicit TLS) completed.
        """

    def tlsFailed(self, session: Session) -> None:
        """
        The connection ended before its TLS handshake completed (after
        STARTTLS, or on an implicit TLS listener).
        """

    def authSucceeded(self, session: Session, mechanism: str, identity: Any) -> None:
        """
        AUTH succeeded (the credentials were good and the AUTH hook agreed).
        """

    def authFailed(self, session: Session, mechanism: str, failures: int) -> None:
        """
        An AUTH attempt failed; C{failures} counts them on this connection.
        """

    def limitReached(self, session: Session, limit: str, detail: str) -> None:
        """
        A protection triggered: C{limit} is one of L{LIMITS}, C{detail} says
        more for a person.
        """

    def hookFinished(self, session: Session, hook: str, seconds: float) -> None:
        """
        Hook C{hook} returned (or raised), or its Deferred fired,
        C{seconds} after it was called.
        """

    def hookFailed(self, session: Session, hook: str, failure: Failure) -> None:
        """
        Hook C{hook} raised or its Deferred failed (not with a ReplyError);
        the client got 451 4.3.0 or the message was refused.
        """


EVENTS = tuple(
    name
    for name, value in vars(ServerObserver).items()
    if callable(value) and not name.startswith("_") and name != "wants"
)
"""
The name of every event.
"""


class ServerEvents:
    """
    The observers of one server, by event: each attribute named after an
    event is the tuple of observer methods to call for it, empty when
    nobody listens. Callers test the tuple before gathering anything:

        if events.commandReplied:
            for notify in events.commandReplied:
                notify(session, verb, reply)
    """

    __slots__ = ("_observers", *EVENTS)

    def __init__(self, observers: Iterable[ServerObserver] = ()) -> None:
        self._observers: list[ServerObserver] = []
        for observer in observers:
            self._observers.append(observer)
        self._update()

    def add(self, observer: ServerObserver) -> None:
        """
        Start telling C{observer}.
        """
        self._observers.append(observer)
        self._update()

    def remove(self, observer: ServerObserver) -> None:
        """
        Stop telling C{observer}.
        """
        self._observers.remove(observer)
        self._update()

    @property
    def observers(self) -> tuple[ServerObserver, ...]:
        """
        The observers, in the order they were added.
        """
        return tuple(self._observers)

    def _update(self) -> None:
        for name in EVENTS:
            base = getattr(ServerObserver, name)
            methods = tuple(
                getattr(observer, name)
                for observer in self._observers
                if getattr(type(observer), name, base) is not base
                and observer.wants(name)
            )
            setattr(self, name, methods)


from .eventlog import LogObserver  # noqa: E402  (it subclasses ServerObserver)
