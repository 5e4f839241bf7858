"""
L{LogObserver}: the server's log, written from its events.

Every line names its session; each refusal is one line with the client,
its HELO name, the sender and recipient concerned and the reply (as
Postfix's C{NOQUEUE: reject:} lines do), and each message accepted one line
with its recipients. The fields of every line are keys of its log event
(the C{event} key names the kind of line), so a JSON log keeps them; see
docs/logging.md for the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .events import ServerObserver

if TYPE_CHECKING:
    from ..reply import Reply
    from ..session import Session, TLSInfo, Transaction

__all__ = ["LogObserver", "REJECT_FORMAT", "MESSAGE_FORMAT"]

_ORDER = list(LogLevel.iterconstants())

REJECT_FORMAT = (
    "session {session} reject: {command} from {client}: {reply}; "
    "from=<{sender}> to={recipients} helo=<{helo}>{why}"
)
"""
The line of a refusal (C{event} C{"reject"}).
"""

MESSAGE_FORMAT = (
    "session {session} message {transaction} {verdict}: client={client} "
    "helo=<{helo}> from=<{sender}> to={recipients} size={size} reply={code}"
)
"""
The line of a message accepted, for all its recipients or some (C{event}
C{"message"}).
"""

_MAX_TEXT = 256
_HELLO = frozenset({"HELO", "EHLO", "LHLO"})


class _Addresses(list[str]):
    """
    Addresses, kept as a list (a JSON array in a JSON log) and written
    C{<a@example.org>,<b@example.org>} in a text line.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return ",".join(f"<{address}>" for address in self) or "<>"

    def __format__(self, spec: str) -> str:
        return str(self)


class _Line:
    """
    A log line, formatted when (and each time) it is written.
    """

    __slots__ = ("template", "fields")

    def __init__(self, template: str, fields: dict[str, Any]) -> None:
        self.template = template
        self.fields = fields

    def __str__(self) -> str:
        return self.template.format_map(self.fields)

    def __format__(self, spec: str) -> str:
        return self.template.format_map(self.fields)


def _clean(text: str) -> str:
    """
    Client-supplied C{text} fit for one log line: no control characters or
    undecodable bytes (escaped), at most L{_MAX_TEXT} characters.
    """
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in text
    )


def _path(argument: str) -> str:
    """
    The path of a MAIL or RCPT argument (C{FROM:<a@example.org> SIZE=10}
    gives C{a@example.org}), as well as a malformed one allows.
    """
    _, colon, rest = argument.partition(":")
    rest = rest.strip() if colon else argument.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        rest = rest[1:end] if end >= 0 else rest[1:]
    else:
        rest = rest.split(" ", 1)[0]
    return _clean(rest)


def _client(session: Session) -> str:
    return session.peerHost or str(session.peer)


def _recipientList(transaction: Transaction) -> str:
    # _Addresses' text, made directly.
    recipients = transaction.recipients
    if len(recipients) == 1:
        return f"<{recipients[0].address}>"
    return ",".join([f"<{r.address}>" for r in recipients]) or "<>"


def _replyText(reply: Reply) -> str:
    text = " ".join(reply.lines)
    if reply.enhanced:
        return f"{reply.code} {reply.enhanced} {text}"
    return f"{reply.code} {text}"


class LogObserver(ServerObserver):
    """
    The server's log, as an observer: one line per event at the level it
    deserves, nothing built for a level that is off.

    A limit or a failed AUTH attempt is told before the reply that refuses
    because of it: its detail is kept (per session) until that reply's
    line, so that one refusal makes one line.
    """

    _LEVELS: ClassVar[dict[str, LogLevel]] = {
        "commandReplied": LogLevel.debug,
        "hookFinished": LogLevel.debug,
        "transactionStarted": LogLevel.debug,
        # Failures go out through Logger.failure, at critical; the hook
        # timeout line at error; the other limits are part of the
        # refusal's line, at info.
        "hookFailed": LogLevel.critical,
        "handlerFailed": LogLevel.critical,
        "limitReached": LogLevel.error,
    }

    def __init__(self, log: Logger, level: LogLevel = LogLevel.info) -> None:
        self.log = log
        self.level = level
        self._info = _ORDER.index(level) <= _ORDER.index(LogLevel.info)
        self._pending: dict[str, tuple[str | None, str | None]] = {}
        # Each open session's client as its lines name it (from its connect
        # line on: behind haproxy:, the address its PROXY header gave).
        self._clients: dict[str, str] = {}
        self._laneOf: object = None
        self._lane: Callable[[str | None, LogLevel, str], None] | None = None

    def _direct(self) -> Callable[[str | None, LogLevel, str], None] | None:
        """
        The fast lane of the text log: when the log's one observer is a
        text observer that takes finished lines (L{TextLogObserver
        <esmtpkit.server.textlog.TextLogObserver>}, as under twistd), its
        C{writeLine}; the most frequent lines (connect, message,
        disconnect) then go to it straight, as the same text, without
        building a log event nobody else would see. Else L{None}.
        """
        observers = getattr(self.log.observer, "_observers", None)
        if observers is None or len(observers) != 1:
            return None
        only = observers[0]
        if only is not self._laneOf:
            self._laneOf = only
            self._lane = getattr(only, "writeLine", None)
        return self._lane

    def _emit(self, level: LogLevel, template: str, **fields: Any) -> None:
        """
        Log a line of C{template} with C{fields}: the text is made only
        when an observer formats the event, by C{str.format_map} (far
        cheaper than the logger's own formatting of many fields).
        """
        # The line holds the fields, not the event that holds the line: no
        # reference cycle per event (the garbage collector's work).
        self.log.emit(level, "{log_line}", log_line=_Line(template, fields), **fields)

    def wants(self, event: str) -> bool:
        wanted = self._LEVELS.get(event, LogLevel.info)
        return _ORDER.index(wanted) >= _ORDER.index(self.level)

    # -- refusals -----------------------------------------------------------

    def _reject(
        self,
        session: Session,
        command: str,
        reply: Reply,
        sender: str,
        recipients: _Addresses,
        helo: str | None = None,
        transaction: Transaction | None = None,
    ) -> None:
        limit, detail = self._pending.pop(session.id, (None, None))
        why = ""
        if limit is not None:
            why = f" limit={limit}"
        if detail:
            why += f" ({detail})"
        self._emit(
            LogLevel.info,
            REJECT_FORMAT,
            event="reject",
            session=session.id,
            client=self._clients.get(session.id) or _client(session),
            helo=helo if helo is not None else session.heloName or "",
            command=command,
            transaction=transaction.id if transaction is not None else None,
            sender=sender,
            recipients=recipients,
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
            reply=_replyText(reply),
            limit=limit,
            detail=detail,
            why=why,
        )

    def commandRefused(
        self, session: Session, verb: str, argument: str, reply: Reply
    ) -> None:
        if verb == "EOM" and session.id not in self._pending:
            return  # the message's own line says it (transactionEnded)
        transaction = session.transaction
        sender = transaction.sender if transaction is not None else ""
        recipients = _Addresses()
        helo = None
        if verb == "MAIL":
            sender = _path(argument)
        elif verb == "RCPT":
            recipients.append(_path(argument))
        elif verb in _HELLO:
            helo = _clean(argument)
        elif transaction is not None and verb in ("DATA", "BDAT", "EOM"):
            recipients.extend(r.address for r in transaction.recipients)
        self._reject(session, verb, reply, sender, recipients, helo)

    def contentRefused(
        self, session: Session, transaction: Transaction | None, reply: Reply
    ) -> None:
        recipients = _Addresses()
        sender = ""
        if transaction is not None:
            sender = transaction.sender
            recipients.extend(r.address for r in transaction.recipients)
        self._reject(session, "EOM", reply, sender, recipients, transaction=transaction)

    def _keep(self, session: Session, limit: str | None, detail: str | None) -> None:
        if self._info:
            self._pending[session.id] = (limit, detail)

    def connectionRefused(self, session: Session, limit: str, reply: Reply) -> None:
        self._keep(session, limit, None)

    def limitReached(self, session: Session, limit: str, detail: str) -> None:
        if limit == "hook-timeout":
            self._emit(
                LogLevel.error,
                "session {session} {detail}",
                event="limit",
                session=session.id,
                limit=limit,
                detail=detail,
            )
        self._keep(session, limit, detail)

    def authFailed(self, session: Session, mechanism: str, failures: int) -> None:
        self._keep(session, None, f"{mechanism} authentication failure {failures}")

    # -- the rest -----------------------------------------------------------

    def connectionOpened(self, session: Session) -> None:
        client = self._clients[session.id] = _client(session)
        direct = self._direct()
        if direct is not None:
            direct(
                self.log.namespace,
                LogLevel.info,
                f"session {session.id} connected from {client}",
            )
            return
        self._emit(
            LogLevel.info,
            "session {session} connected from {client}",
            event="connect",
            session=session.id,
            client=client,
        )

    def connectionClosed(self, session: Session) -> None:
        self._clients.pop(session.id, None)
        limit, detail = self._pending.pop(session.id, (None, None))
        if limit is not None or detail is not None:
            # Told, but no reply followed (the client was gone).
            self._emit(
                LogLevel.info,
                "session {session} {detail}",
                event="limit",
                session=session.id,
                limit=limit,
                detail=detail or limit,
            )
        direct = self._direct()
        if direct is not None:
            direct(
                self.log.namespace,
                LogLevel.info,
                f"session {session.id} disconnected "
                f"({session.messages} messages accepted)",
            )
            return
        self._emit(
            LogLevel.info,
            "session {session} disconnected ({messages} messages accepted)",
            event="disconnect",
            session=session.id,
            messages=session.messages,
        )

    def handlerFailed(self, session: Session, failure: Failure) -> None:
        self.log.failure(
            "session {session} could not build its handler",
            failure=failure,
            event="handler-failed",
            session=session.id,
        )

    def commandReplied(self, session: Session, verb: str, reply: Reply) -> None:
        self._emit(
            LogLevel.debug,
            "session {session} {command} -> {code}",
            event="reply",
            session=session.id,
            command=verb,
            code=reply.code,
        )

    def transactionStarted(self, session: Session, transaction: Transaction) -> None:
        self._emit(
            LogLevel.debug,
            "session {session} message {transaction} from=<{sender}>",
            event="mail",
            session=session.id,
            transaction=transaction.id,
            sender=transaction.sender,
        )

    def transactionEnded(
        self,
        session: Session,
        transaction: Transaction,
        outcome: str,
        replies: Sequence[Reply],
    ) -> None:
        if outcome == "aborted":
            return
        if outcome == "refused":
            self._reject(
                session,
                "EOM",
                replies[0],
                transaction.sender,
                _Addresses([r.address for r in transaction.recipients]),
                transaction=transaction,
            )
            return
        first = replies[0].code
        code: Any = first
        for reply in replies:
            if reply.code != first:
                code = ",".join(str(reply.code) for reply in replies)
                break
        client = self._clients.get(session.id) or _client(session)
        direct = self._direct()
        if direct is not None:
            # MESSAGE_FORMAT as an f-string (test_textlog compares the two).
            direct(
                self.log.namespace,
                LogLevel.info,
                f"session {session.id} message {transaction.id} {outcome}: "
                f"client={client} helo=<{session.heloName or ''}> "
                f"from=<{transaction.sender}> to={_recipientList(transaction)} "
                f"size={transaction.size} reply={code}",
            )
            return
        recipients = _Addresses([r.address for r in transaction.recipients])
        self._emit(
            LogLevel.info,
            MESSAGE_FORMAT,
            event="message",
            session=session.id,
            client=client,
            helo=session.heloName or "",
            transaction=transaction.id,
            verdict=outcome,
            sender=transaction.sender,
            recipients=recipients,
            size=transaction.size,
            code=code,
        )

    def tlsStarted(self, session: Session) -> None:
        self._emit(
            LogLevel.info,
            "session {session} starting TLS",
            event="tls-start",
            session=session.id,
        )

    def tlsEstablished(self, session: Session, tls: TLSInfo) -> None:
        self._emit(
            LogLevel.info,
            "session {session} TLS {version} {cipher}",
            event="tls",
            session=session.id,
            version=tls.version,
            cipher=tls.cipher,
        )

    def tlsFailed(self, session: Session) -> None:
        self._emit(
            LogLevel.info,
            "session {session} TLS handshake did not complete",
            event="tls-failed",
            session=session.id,
        )

    def authSucceeded(self, session: Session, mechanism: str, identity: Any) -> None:
        self._emit(
            LogLevel.info,
            "session {session} authenticated as {identity} ({mechanism})",
            event="auth",
            session=session.id,
            mechanism=mechanism,
            identity=identity,
        )

    def hookFinished(self, session: Session, hook: str, seconds: float) -> None:
        self._emit(
            LogLevel.debug,
            "session {session} hook {hook} took {seconds:.6f}s",
            event="hook",
            session=session.id,
            hook=hook,
            seconds=seconds,
        )

    def hookFailed(self, session: Session, hook: str, failure: Failure) -> None:
        self.log.failure(
            "session {session} hook {hook} failed",
            failure=failure,
            event="hook-failed",
            session=session.id,
            hook=hook,
        )
