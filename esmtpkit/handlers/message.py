"""
L{Message}: each message as an L{email.message.EmailMessage}, handed to
C{handle_message(message, envelope)}, whose result is the reply.
"""

from __future__ import annotations

import email.policy
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesFeedParser, BytesParser
from typing import IO, Any

from twisted.python.usage import UsageError

from ..core.modifications import declaresModifications, modifiedBefore
from ..core.rewrite import ModifiedMessage
from ..handler import ESMTPHandler
from ..reply import HookResult, Reply, ReplyError
from ..server.startup import StartupError, resolveName
from ..session import Params, Recipient, Session, TLSInfo
from .options import HandlerOptions, positiveInt

__all__ = ["Envelope", "Message", "MessageOptions"]

TOO_BIG = Reply(552, "Message too large for this service", enhanced="5.3.4")
MODIFIED = Reply(
    451,
    "Requested action aborted: cannot apply the message modifications",
    enhanced="4.3.0",
)
SPOOL_FAILED = Reply(452, "Insufficient system storage", enhanced="4.3.1")

# Headers that decide how the body is parsed: changed without the body
# received at hand, the parse cannot follow.
_STRUCTURE = ("content-", "mime-version")


@dataclass(frozen=True)
class Envelope:
    """
    What the SMTP conversation said about a message, besides the message.

    @ivar sender: the reverse-path, C{""} for the null sender.
    @ivar mailParams: the ESMTP parameters of MAIL.
    @ivar recipients: the accepted recipients in order, each a
        L{Recipient} (C{address}, C{params}).
    @ivar clientAddress: the client's IP address as text (C{""} when there
        is none, as on a unix socket).
    @ivar clientPort: the client's port, or L{None}.
    @ivar heloName: the name the client gave in HELO/EHLO/LHLO.
    @ivar tls: the L{TLSInfo} of an encrypted session, else L{None}.
    @ivar authenticated: the AUTH identity, or L{None}.
    @ivar transactionId: the transaction id (as in the 250 reply and logs).
    @ivar sessionId: the session id.
    @ivar size: the message's size in bytes, as received.
    @ivar quarantine: the reason a handler before this one quarantined the
        message (C{modifications.quarantineMessage}), or L{None}.

    Under L{modifications <esmtpkit.session.Transaction.modifications>},
    C{sender}, C{mailParams} and C{recipients} are the modified envelope's.
    """

    sender: str
    mailParams: Params
    recipients: tuple[Recipient, ...]
    clientAddress: str
    clientPort: int | None
    heloName: str | None
    tls: TLSInfo | None
    authenticated: Any
    transactionId: str
    sessionId: str
    size: int
    quarantine: str | None = None

    @classmethod
    def fromSession(cls, session: Session) -> Envelope:
        """
        The envelope of C{session}'s open transaction, as its modifications
        make it.
        """
        transaction = session.transaction
        assert transaction is not None
        modified = ModifiedMessage(transaction)
        changed = modified.envelope
        return cls(
            sender=changed.sender,
            mailParams=changed.senderParams,
            recipients=changed.recipients,
            quarantine=modified.quarantine,
            clientAddress=session.peerHost,
            clientPort=getattr(session.peer, "port", None),
            heloName=session.heloName,
            tls=session.tls,
            authenticated=session.authenticated,
            transactionId=transaction.id,
            sessionId=session.id,
            size=transaction.size,
        )


class MessageOptions(HandlerOptions):
    optParameters = [
        [
            "function",
            None,
            None,
            "Dotted name of a function handle_message(message, envelope) "
            "(for the Message class itself; a subclass defines the method).",
        ],
        [
            "max-size",
            None,
            None,
            "Largest message parsed, in bytes; larger ones get 552 5.3.4 "
            "[default: the server's --max-message-size].",
            positiveInt,
        ],
    ]


class Message(ESMTPHandler):
    """
    Parses each message as it streams in (L{email.parser.BytesFeedParser},
    policy L{email.policy.default}) and, at EOM, calls
    C{handle_message(message, envelope)} with the
    L{email.message.EmailMessage} and its L{Envelope}. What that returns is
    the reply to the message, as for L{EOM}: L{None} (accepted), a reply, a
    L{Deferred}, or a coroutine (C{async def}); an exception means
    C{451 4.3.0}.

    Subclass it and define C{handle_message}, or give a function:
    C{Message(handle_message=func)}, C{--handler-option function=mod.func}.

    The message is the one the L{modifications
    <esmtpkit.session.Transaction.modifications>} recorded before this
    handler's EOM make it (what L{ModifiedMessage} renders). When this
    handler or one before it in a chain declares C{mayModify}, the body is
    spooled to an unnamed temporary file and parsed at EOM as modified;
    otherwise it is parsed as it streams in, and modifications found at EOM
    are applied to the parsed message (a new body is parsed afresh, new
    headers replace the old); a change of a C{Content-*} or C{MIME-Version}
    header that way cannot be followed and gets C{451 4.3.0}.

    Memory: the whole message is held, parsed, until C{handle_message} has
    answered -- several times its size in Python objects (the parser keeps
    the lines, then the parts' payloads as text). The server's size limit,
    or C{maxSize}, bounds it; for large messages stream with L{BODY}
    instead.
    """

    Options = MessageOptions

    def __init__(self, handle_message: Any = None, maxSize: int | None = None) -> None:
        """
        @param handle_message: the function to call, if the class does not
            define C{handle_message}.
        @param maxSize: refuse (552 5.3.4) messages larger than this many
            bytes; L{None} for the server's limit alone.
        """
        super().__init__()
        if handle_message is not None:
            self.handle_message = handle_message
        self.maxSize = maxSize
        self._parser: BytesFeedParser | None = None
        self._spool: IO[bytes] | None = None
        self._size = 0

    @classmethod
    def fromHandlerOptions(cls, options: MessageOptions) -> Any:
        """
        Resolve C{function=} once, at start-up.
        """
        name = options["function"]
        function = None
        if name is not None:
            try:
                function = resolveName(name, "function=")
            except StartupError as e:
                raise UsageError(e.message) from None
            if not callable(function):
                raise UsageError(f"function={name}: not callable")
        elif cls.handle_message is Message.handle_message:
            raise UsageError("needs function=module.name (or a subclass)")
        maxSize = options["max-size"]
        return lambda: cls(function, maxSize)

    def handle_message(self, message: EmailMessage, envelope: Envelope) -> HookResult:
        """
        Deal with one message (override this, or give a function).

        @param message: the message as parsed.
        @param envelope: its envelope.
        @return: the reply to the message (L{None}: accepted).
        """
        return None

    def DATA(self) -> HookResult:
        self._closeSpool()
        self._parser = BytesFeedParser(policy=email.policy.default)
        self._size = 0
        if declaresModifications(self) or modifiedBefore(self.session):
            try:
                self._spool = tempfile.TemporaryFile()
            except OSError:
                self._parser = None
                return SPOOL_FAILED
        return None

    def EOH(self) -> HookResult:
        transaction = self.session.transaction
        assert transaction is not None
        if self._spool is not None:
            self._count(len(transaction.rawHeaders))  # written at EOM
            return None
        self._feed(transaction.rawHeaders)
        return None

    def BODY(self, chunk: bytes) -> HookResult:
        self._feed(chunk)
        return None

    def _count(self, size: int) -> None:
        self._size += size
        if self.maxSize is not None and self._size > self.maxSize:
            self._parser = None  # let it go now, not at the end of the data
            self._closeSpool()
            raise ReplyError(TOO_BIG)

    def _feed(self, data: bytes) -> None:
        if self._parser is None:
            return
        self._count(len(data))
        spool = self._spool
        if spool is None:
            self._parser.feed(data)
            return
        try:
            spool.write(data)
        except OSError:
            self._parser = None
            self._closeSpool()
            raise ReplyError(SPOOL_FAILED) from None

    def EOM(self) -> HookResult:
        parser, self._parser = self._parser, None
        spool, self._spool = self._spool, None
        transaction = self.session.transaction
        assert parser is not None and transaction is not None
        if spool is not None:
            try:
                spool.seek(0)
                for chunk in ModifiedMessage(transaction).chunks(spool):
                    parser.feed(chunk)
            finally:
                spool.close()
            message = parser.close()
        else:
            message = parser.close()
            if transaction.modified:
                message = _applied(message, transaction)
        envelope = Envelope.fromSession(self.session)
        return self.handle_message(message, envelope)  # type: ignore[arg-type]

    def _closeSpool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    def ABORT(self) -> HookResult:
        self._parser = None
        self._closeSpool()
        return None

    def DISCONNECT(self) -> HookResult:
        self._parser = None
        self._closeSpool()
        return None


def _applied(message: Any, transaction: Any) -> Any:
    """
    C{message}, parsed as it streamed in, as the transaction's
    modifications make it: parsed afresh with a new body; else its headers
    replaced by the new header section's, as a parse of it gives them.

    @raise ReplyError: a header that decides the body's structure changed
        and the body received is gone (451 4.3.0).
    """
    modified = ModifiedMessage(transaction)
    policy = email.policy.default
    if modified.replacement is not None:
        parser = BytesFeedParser(policy=policy)
        for chunk in modified.chunks(b""):
            parser.feed(chunk)
        return parser.close()
    if not modified.headersChanged:
        return message
    changes = transaction.modifications.headers
    if any(c.name.lower().startswith(_STRUCTURE) for c in changes):
        raise ReplyError(MODIFIED)
    headers = BytesParser(policy=policy).parsebytes(
        modified.headerSection, headersonly=True
    )
    for name in set(message.keys()):
        del message[name]
    for name, value in headers.raw_items():
        message.set_raw(name, value)
    return message
