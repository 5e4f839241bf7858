"""
Receiving a message after DATA: header lines in line mode (HEADER, EOH), the
body in raw mode (BODY), the end of the data (EOM), size limits, and refusing
a message part-way while still reading it to its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from .data import BODY, END, BodyScanner, HeaderParser
from .reply import Reply
from .session import Transaction

if TYPE_CHECKING:
    from twisted.logger import Logger

    from .hooks import HookRunner
    from .session import Session
    from .settings import Settings

__all__ = ["MessageReceiver", "HEADERS", "BODY_STATE"]

HEADERS = "headers"  # line mode: reading the header section
BODY_STATE = "body"  # raw mode: streaming the body

TOO_BIG = Reply(
    552, "Message size exceeds fixed maximum message size", enhanced="5.3.4"
)
HEADERS_TOO_BIG = Reply(552, "Message header section too large", enhanced="5.3.4")


class MessageReceiver:
    """
    The part of L{ESMTPProtocol <esmtpkit.protocol.ESMTPProtocol>} that
    receives message content, as a mixin. The protocol calls
    L{_beginMessage} when DATA is answered with 354, then
    L{_headerLine} for each line while in the L{HEADERS} state and
    L{_bodyData} for raw bytes while in L{BODY_STATE}; when the message is
    over, this calls the protocol's C{_messageDone(reply)}.

    Every content byte (after dot-unstuffing) counts towards the message
    size. Once the message is refused (a limit, or a content hook failed),
    no more content hooks are called, ABORT is called at once, and the
    reply waits for the end of the data, which is still looked for.
    """

    # Provided by the protocol:
    session: Session
    settings: Settings
    log: Logger
    _hooks: HookRunner
    _state: str
    _verb: str
    MAX_LENGTH: int

    def _messageDone(self, reply: Reply) -> None:
        raise NotImplementedError

    def _abortStep(self) -> None:
        raise NotImplementedError

    def setRawMode(self) -> None:
        raise NotImplementedError

    def setLineMode(self, extra: bytes = b"") -> None:
        raise NotImplementedError

    # -- state ------------------------------------------------------------

    def _beginMessage(self) -> None:
        """
        DATA was accepted: read the header section next.
        """
        self._state = HEADERS
        self.MAX_LENGTH = self.settings.maxHeaderSize
        self._headerParser = HeaderParser()
        self._rawHeaders = bytearray()
        self._messageSize = 0
        self._failure: Reply | None = None
        self._bodyQueue = b""
        self._bodyPos = 0
        self._endOfDataSeen = False

    def _endMessage(self) -> None:
        self._failure = None
        self._rawHeaders = bytearray()
        self._bodyQueue = b""
        self.MAX_LENGTH = self.settings.maxLineLength

    # -- headers ----------------------------------------------------------

    def _headerLine(self, line: bytes) -> None:
        """
        One line of the header section (without CRLF, dot-stuffing intact).
        """
        if line == b".":
            self._verb = "EOM"
            self._hooks.now(self._flushHeader, self._eohStep, self._endOfData)
            return
        if line[:1] == b".":
            line = line[1:]
        kind, completed = self._headerParser.line(line)
        if kind != BODY:
            self._rawHeaders += line
            self._rawHeaders += b"\r\n"
            if not self._countContent(len(line) + 2):
                self._startBody()
                return
            if len(self._rawHeaders) > self.settings.maxHeaderSize:
                self._failMessage(HEADERS_TOO_BIG)
                self._startBody()
                return
        if completed is not None:
            self._hooks.now(lambda: self._contentHook("HEADER", completed))
        if kind == END:
            self._startBody()
        elif kind == BODY:
            self._startBody()
            self._queueBody(line + b"\r\n")

    def _headerLineTooLong(self) -> None:
        """
        A header line is longer than the header section may be: refuse the
        message and read the rest as body bytes that start mid-line (the
        line may end right before the terminator).
        """
        self._failMessage(HEADERS_TOO_BIG)
        self._startBody(atLineStart=False)

    def _flushHeader(self) -> None:
        completed = self._headerParser.finish()
        if completed is not None:
            self._contentHook("HEADER", completed)

    def _startBody(self, atLineStart: bool = True) -> None:
        """
        The header section is over: queue EOH and switch to raw mode.
        """
        self._state = BODY_STATE
        self.MAX_LENGTH = self.settings.maxLineLength
        self._scanner = BodyScanner(atLineStart)
        self.setRawMode()
        if self._failure is None:
            self._hooks.later(self._flushHeader, self._eohStep)

    def _eohStep(self) -> None:
        transaction = self.session.transaction
        if transaction is not None:
            transaction.rawHeaders = bytes(self._rawHeaders)
        self._contentHook("EOH", ())

    # -- body -------------------------------------------------------------

    def _bodyData(self, data: bytes) -> None:
        """
        Raw bytes of the body as they were read.
        """
        pieces, leftover = self._scanner.feed(data)
        if leftover is not None:
            self._verb = "EOM"
            self._endOfDataSeen = True
            self.setLineMode(leftover)
        self._queueBody(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _queueBody(self, body: bytes) -> None:
        if self._bodyPos < len(self._bodyQueue):
            body = self._bodyQueue[self._bodyPos :] + body
        self._bodyQueue = body
        self._bodyPos = 0
        self._hooks.later(self._pumpBody)

    def _pumpBody(self) -> None:
        """
        Hand the next chunk of queued body bytes to BODY (one hook call per
        step, so a pending BODY stops the pump), then end the message if its
        end was seen.
        """
        body, start = self._bodyQueue, self._bodyPos
        if start < len(body):
            size = self.settings.chunkSize
            piece = body[start : start + size] if start or len(body) > size else body
            self._bodyPos = start + len(piece)
            self._hooks.now(self._pumpBody)
            if self._countContent(len(piece)):
                self._contentHook("BODY", (piece,))
            return
        self._bodyQueue = b""
        self._bodyPos = 0
        if self._endOfDataSeen:
            self._endOfDataSeen = False
            self._endOfData()

    # -- hooks and refusal --------------------------------------------------

    def _contentHook(self, name: str, args: tuple[Any, ...]) -> None:
        """
        Call HEADER, EOH or BODY unless the message was already refused; a
        failure refuses the message.
        """
        if self._failure is not None:
            return
        if name == "HEADER":
            transaction = self.session.transaction
            if transaction is not None:
                transaction.headers.append((args[0], args[1]))

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self._failMessage(self._hooks.failureReply(name, value))

        self._hooks.invoke(name, args, done)

    def _failMessage(self, reply: Reply) -> None:
        """
        Refuse the message being received: no more content hooks, ABORT now,
        C{reply} once the client has sent the end of the data.
        """
        if self._failure is not None:
            return
        self._failure = reply
        transaction = self.session.transaction
        self.log.info(
            "session {session} message {transaction} refused while receiving: "
            "{code} {text}",
            session=self.session.id,
            transaction=transaction.id if transaction else "-",
            code=reply.code,
            text=reply.text,
        )
        self._hooks.now(self._abortStep)

    def _countContent(self, size: int) -> bool:
        """
        Add C{size} bytes to the message size and refuse the message once it
        passes the limit. Returns whether the message is still wanted.
        """
        self._messageSize += size
        limit = self.settings.maxMessageSize
        if limit and self._messageSize > limit:
            self._failMessage(TOO_BIG)
        return self._failure is None

    # -- the end ------------------------------------------------------------

    def _endOfData(self) -> None:
        transaction = self.session.transaction
        if transaction is not None:
            transaction.size = self._messageSize
        if self._failure is not None:
            failure = self._failure
            self._endMessage()
            self._messageDone(failure)
            return

        def answered(reply: Reply) -> None:
            if transaction is not None:
                self._logMessage(transaction, reply)
            if reply.code // 100 == 2:
                self.session.messages += 1
            self.session.transaction = None
            self._endMessage()
            self._messageDone(reply)

        self._hooks.callReply("EOM", (), answered)

    def _logMessage(self, transaction: Transaction, reply: Reply) -> None:
        verdict = "accepted" if reply.code // 100 == 2 else "refused"
        self.log.info(
            "session {session} message {transaction} {verdict}: from=<{sender}> "
            "recipients={recipients} size={size} reply={code}",
            session=self.session.id,
            transaction=transaction.id,
            verdict=verdict,
            sender=transaction.sender,
            recipients=len(transaction.recipients),
            size=transaction.size,
            code=reply.code,
        )
