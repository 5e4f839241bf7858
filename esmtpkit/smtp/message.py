"""
Receiving a message: after DATA, header lines in line mode and the body in
raw mode; after BDAT, chunks of exactly the announced size in raw mode. Both
feed the same HEADER, EOH, BODY and EOM hooks, the same size limit, and the
same way of refusing a message part-way while still reading it to its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from ..core.headers import BODY, END, HeaderParser, parseHeaderSection
from ..reply import Reply
from ..session import Transaction
from .framing import BodyScanner, hasBareLineEnding, normalizeLineEndings
from .params import TOO_BIG

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ..core.hooks import HookRunner
    from ..server.factory import ESMTPFactory, LevelLogger
    from ..session import Session
    from ..settings import Settings

__all__ = ["MessageReceiver", "COMMAND", "HEADERS", "BODY_STATE", "CHUNK"]

COMMAND = "command"  # line mode: reading commands
HEADERS = "headers"  # DATA, line mode: reading the header section
BODY_STATE = "body"  # DATA, raw mode: streaming the body
CHUNK = "chunk"  # BDAT, raw mode: reading a chunk of known size

HEADERS_TOO_BIG = Reply(552, "Message header section too large", enhanced="5.3.4")
BARE_LINE_ENDING = Reply(
    550, "Bare CR or LF in message; lines must end with CRLF", enhanced="5.5.2"
)


class _Message:
    """
    The state of the message being received (one per DATA, or per series of
    BDAT chunks).
    """

    __slots__ = (
        "chunking",
        "inHeaders",
        "headerParser",
        "rawHeaders",
        "headerBuffer",
        "size",
        "failure",
        "bodyQueue",
        "bodyPos",
        "endOfDataSeen",
        "lineStartCRLF",
        "heldCR",
        "scanner",
    )

    def __init__(self, chunking: bool) -> None:
        self.chunking = chunking
        self.inHeaders = True
        # Made for the first header line read alone (see _headerData).
        self.headerParser: HeaderParser | None = None
        self.rawHeaders = bytearray()
        self.headerBuffer = b""
        self.size = 0
        self.failure: Reply | None = None
        self.bodyQueue = b""
        self.bodyPos = 0
        self.endOfDataSeen = False
        self.lineStartCRLF = True
        self.heldCR = b""
        self.scanner: BodyScanner | None = None  # made when the body starts


class MessageReceiver:
    """
    The part of L{ESMTPProtocol <esmtpkit.smtp.protocol.ESMTPProtocol>} that
    receives message content, as a mixin.

    For DATA the protocol calls L{_beginMessage} once DATA is answered with
    354, then L{_headerLine} for each line in the L{HEADERS} state and
    L{_bodyData} for raw bytes in L{BODY_STATE}. For BDAT it calls
    L{_readChunk}, after which raw bytes go to L{_chunkData}. When a
    message or chunk is over, this calls the protocol's
    C{_messageDone(reply)}.

    Every content byte (after dot-unstuffing) counts towards the message
    size. Once the message is refused (a limit, a bare line ending, or a
    content hook failed), no more content hooks are called, ABORT is called
    at once, and the reply waits for the end of the data, which is still
    looked for.
    """

    # Provided by the protocol:
    factory: ESMTPFactory
    session: Session
    settings: Settings
    log: LevelLogger
    _hooks: HookRunner
    _state: str
    _verb: str
    MAX_LENGTH: int
    bareLineEnding: bool

    # Message state, and per-request state, as class defaults so that an idle
    # connection carries none of it.
    _msg: _Message | None = None
    _deadline = 0.0
    _deadlineCall: IDelayedCall | None = None
    _chunkRemaining = 0
    _chunkLast = False
    _chunkRefusal: Reply | None = None
    _chunkSize = 0
    _skipHooks: frozenset[str] = frozenset()  # set by the protocol

    def _messageDone(self, reply: Reply) -> None:
        raise NotImplementedError

    def _abortStep(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _write(self, reply: Reply, enhanced: bool = True) -> None:
        raise NotImplementedError

    def setRawMode(self) -> None:
        raise NotImplementedError

    def setLineMode(self, extra: bytes = b"") -> None:
        raise NotImplementedError

    def pushBack(self, data: bytes) -> None:
        raise NotImplementedError

    # -- state ------------------------------------------------------------

    def _resetMessage(self) -> None:
        """
        Forget any message content state (a new transaction starts).
        """
        self._msg = None

    def _beginMessage(self) -> None:
        """
        DATA was answered with 354: read the header section next.
        """
        self._msg = _Message(chunking=False)
        self._state = HEADERS
        self.MAX_LENGTH = self.settings.maxHeaderSize
        self._startDeadline()
        if "HEADER" in self._skipHooks:
            # The first read may hold the whole header section: see
            # _headerData.
            self.setRawMode()

    def _endMessage(self) -> None:
        self._stopDeadline()
        self._msg = None
        self.MAX_LENGTH = self.settings.maxLineLength

    # -- the deadline of a request --------------------------------------------

    def _startDeadline(self) -> None:
        """
        Give the content of this request idleTimeout seconds, extended by one
        second per minDataRate bytes that arrive (Postfix's
        smtpd_min_data_rate), so that a client trickling bytes cannot hold
        the connection.

        C{_deadline} is the deadline, 0 when there is none. One timer per
        connection looks at it, moved rather than made anew for each
        request (moving a timer later costs next to nothing).
        """
        if not self.settings.minDataRate:
            return
        clock = self.factory.clock
        timeout = self.settings.idleTimeout
        self._deadline = clock.seconds() + timeout
        call = self._deadlineCall
        if call is not None and call.active():
            call.reset(timeout)
        else:
            self._deadlineCall = clock.callLater(timeout, self._checkDeadline)

    def _extendDeadline(self, size: int) -> None:
        if self._deadline:
            self._deadline += size / self.settings.minDataRate

    def _holdDeadline(self, seconds: float) -> None:
        """
        The server, not the client, used C{seconds} (a slow hook).
        """
        if self._deadline:
            self._deadline += seconds

    def _checkDeadline(self) -> None:
        self._deadlineCall = None
        if not self._deadline:
            return  # the request ended in time
        clock = self.factory.clock
        now = clock.seconds()
        if now < self._deadline:
            self._deadlineCall = clock.callLater(
                self._deadline - now, self._checkDeadline
            )
            return
        if self._hooks.pending is not None:
            # A hook is running; the client is not to blame. Look again later.
            self._deadline = now + 1.0
            self._deadlineCall = clock.callLater(1.0, self._checkDeadline)
            return
        self._deadline = 0.0
        self.log.info(
            "session {session} sent its message too slowly", session=self.session.id
        )
        self._write(
            Reply(
                421,
                f"{self.session.hostname} Error: timeout exceeded (message too slow)",
                enhanced="4.4.2",
            )
        )

    def _stopDeadline(self) -> None:
        """
        The request is over: no deadline (its timer is left to be moved by
        the next request, or to find nothing to do).
        """
        self._deadline = 0.0

    def _cancelDeadline(self) -> None:
        self._deadline = 0.0
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()

    # -- DATA: the header section, line by line -----------------------------

    def _headerData(self, data: bytes) -> None:
        """
        The first bytes after 354, read raw (only for a handler without a
        HEADER hook). If they hold a plain header section whole -- no line
        starting with a dot, no bare CR or LF, within the size limits, every
        line a field or a continuation -- it is taken in one piece, with
        the same effect as reading it line by line; otherwise, and for the
        rest of the message, lines are read one at a time.
        """
        self.setLineMode()
        m = self._msg
        assert m is not None
        end = data.find(b"\r\n\r\n") + 2
        fields = None
        if end > 1:
            section = data[:end]
            total = end + 2
            limit = self.settings.maxMessageSize
            if (
                total <= self.settings.maxHeaderSize
                and not (limit and m.size + total > limit)
                and section[:1] != b"."
                and b"\n." not in section
                and not hasBareLineEnding(section)
            ):
                fields = parseHeaderSection(section)
        if fields is None:
            self.pushBack(data)
            return
        self._extendDeadline(total)
        m.rawHeaders += data[:total]
        m.size += total
        transaction = self.session.transaction
        if transaction is not None:
            transaction.headers.extend(fields)
        self._startBody()
        self.pushBack(data[total:])

    def _headerLine(self, line: bytes) -> None:
        """
        One line of the header section after DATA (without its line ending,
        dot-stuffing intact).
        """
        m = self._msg
        assert m is not None
        atLineStart = m.lineStartCRLF
        bare = self.bareLineEnding
        m.lineStartCRLF = not bare
        self._extendDeadline(len(line) + 2)
        if atLineStart and line[:1] == b".":
            if line == b"." and not bare:
                self._verb = "EOM"
                self._hooks.now(self._flushHeader, self._eohStep, self._endOfData)
                return
            line = line[1:]
        if bare or b"\r" in line:
            if self.settings.bareLineEndings == "reject":
                self._failMessage(BARE_LINE_ENDING)
                self._startBody(atLineStart=not bare)
                return
            line = line.replace(b"\r", b"")
        self._contentLine(line, b"\r\n")

    def _contentLine(self, line: bytes, ending: bytes) -> None:
        """
        A line of the header section, already unstuffed (DATA) and
        normalised if need be, and the line ending to keep with it.
        """
        m = self._msg
        assert m is not None
        parser = m.headerParser
        if parser is None:
            parser = m.headerParser = HeaderParser()
        kind, completed = parser.line(line)
        if kind != BODY:
            m.rawHeaders += line
            m.rawHeaders += ending
            if not self._countContent(len(line) + len(ending)):
                self._startBody()
                return
            if len(m.rawHeaders) > self.settings.maxHeaderSize:
                self._failMessage(HEADERS_TOO_BIG)
                self._startBody()
                return
        if completed is not None:
            if "HEADER" in self._skipHooks:
                if m.failure is None:
                    self._recordHeader(completed)
            else:
                self._hooks.later(lambda: self._contentHook("HEADER", completed))
        if kind == END:
            self._startBody()
        elif kind == BODY:
            self._startBody()
            self._queueBody(line + ending)

    def _headerLineTooLong(self) -> None:
        """
        A header line is longer than the header section may be: refuse the
        message and read the rest as body bytes that start mid-line (the
        line may end right before the terminator).
        """
        self._failMessage(HEADERS_TOO_BIG)
        self._startBody(atLineStart=False)

    def _flushHeader(self) -> None:
        m = self._msg
        assert m is not None
        completed = m.headerParser.finish() if m.headerParser is not None else None
        if completed is not None:
            self._contentHook("HEADER", completed)

    def _startBody(self, atLineStart: bool | None = None) -> None:
        """
        The header section is over: queue EOH, and for DATA switch to raw
        mode.

        @param atLineStart: whether the body starts right after a CRLF,
            where a dot may end the data; by default, whether the last line
            read ended with CRLF (a bare LF, even normalised, never makes a
            line start: only <CR><LF>.<CR><LF> ends DATA).
        """
        m = self._msg
        assert m is not None
        m.inHeaders = False
        if not m.chunking:
            self._state = BODY_STATE
            self.MAX_LENGTH = self.settings.maxLineLength
            start = m.lineStartCRLF if atLineStart is None else atLineStart
            m.scanner = BodyScanner(start)
            self.setRawMode()
        if m.failure is None:
            if m.headerParser is not None:
                self._hooks.later(self._flushHeader, self._eohStep)
            elif "EOH" in self._skipHooks and self._hooks.idle:
                self._eohStep()  # nothing to call, nothing to wait for
            else:
                self._hooks.later(self._eohStep)

    def _eohStep(self) -> None:
        m = self._msg
        assert m is not None
        transaction = self.session.transaction
        if transaction is not None:
            transaction.rawHeaders = bytes(m.rawHeaders)
        self._contentHook("EOH", ())

    # -- DATA: the body, raw ----------------------------------------------

    def _bodyData(self, data: bytes) -> None:
        """
        Raw bytes of a DATA body as they were read.
        """
        m = self._msg
        assert m is not None
        self._extendDeadline(len(data))
        assert m.scanner is not None
        pieces, leftover = m.scanner.feed(data)
        if leftover is not None:
            self._verb = "EOM"
            m.endOfDataSeen = True
            self.setLineMode(leftover)
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if body and hasBareLineEnding(body):
            if self.settings.bareLineEndings == "reject":
                self._failMessage(BARE_LINE_ENDING)
            else:
                body = normalizeLineEndings(body)
        self._queueBody(body)

    def _queueBody(self, body: bytes) -> None:
        m = self._msg
        assert m is not None
        if (
            "BODY" in self._skipHooks
            and self._hooks.idle
            and m.bodyPos >= len(m.bodyQueue)
        ):
            # No BODY hook and nothing waiting: count the bytes now, as the
            # pump would at once, instead of queueing them for it.
            if body:
                self._countContent(len(body))
            if m.endOfDataSeen:
                m.endOfDataSeen = False
                self._hooks.later(self._endOfData)
            return
        if m.bodyPos < len(m.bodyQueue):
            body = m.bodyQueue[m.bodyPos :] + body
        m.bodyQueue = body
        m.bodyPos = 0
        self._hooks.later(self._pumpBody)

    def _pumpBody(self) -> None:
        """
        Hand the next chunk of queued body bytes to BODY (one hook call per
        step, so a pending BODY stops the pump), then end the message if its
        end was seen.
        """
        m = self._msg
        assert m is not None
        body, start = m.bodyQueue, m.bodyPos
        if start < len(body):
            size = self.settings.chunkSize
            piece = body[start : start + size] if start or len(body) > size else body
            m.bodyPos = start + len(piece)
            self._hooks.now(self._pumpBody)
            if self._countContent(len(piece)):
                self._contentHook("BODY", (piece,))
            return
        m.bodyQueue = b""
        m.bodyPos = 0
        if m.endOfDataSeen:
            m.endOfDataSeen = False
            self._endOfData()

    # -- BDAT ---------------------------------------------------------------

    def _readChunk(self, size: int, last: bool, refusal: Reply | None) -> None:
        """
        Read the next C{size} bytes as a BDAT chunk: content of the message,
        or, with a C{refusal}, bytes to throw away before answering with it.
        Chunk bytes are never read as commands.
        """
        if refusal is None and self._msg is None:
            self._msg = _Message(chunking=True)
        self._chunkRemaining = size
        self._chunkLast = last
        self._chunkRefusal = refusal
        self._chunkSize = size
        self._state = CHUNK
        self.setRawMode()
        self._startChunkDeadline()
        if size == 0:
            self._chunkEnded()

    def _startChunkDeadline(self) -> None:
        self._stopDeadline()
        self._startDeadline()

    def _chunkData(self, data: bytes) -> None:
        """
        Raw bytes while reading a BDAT chunk.
        """
        remaining = self._chunkRemaining
        if len(data) > remaining:
            self.pushBack(data[remaining:])
            data = data[:remaining]
        self._chunkRemaining = remaining - len(data)
        self._extendDeadline(len(data))
        if self._chunkRefusal is None:
            self._chunkContent(data)
        if self._chunkRemaining == 0:
            self._chunkEnded()

    def _chunkContent(self, data: bytes) -> None:
        m = self._msg
        assert m is not None
        if m.failure is not None:
            self._countContent(len(data))
            return
        if self.settings.bareLineEndings == "normalize" and not self._binary():
            data = self._normalizeChunk(data)
        if not m.inHeaders:
            self._queueBody(data)
            return
        buffer = m.headerBuffer + data if m.headerBuffer else data
        pos = 0
        while m.inHeaders and m.failure is None:
            end = buffer.find(b"\n", pos)
            if end < 0:
                break
            lineEnd = end - 1 if end > pos and buffer[end - 1] == 13 else end
            self._contentLine(buffer[pos:lineEnd], buffer[lineEnd : end + 1])
            pos = end + 1
        rest = buffer[pos:]
        if not m.inHeaders:
            m.headerBuffer = b""
            if m.failure is None:
                self._queueBody(rest)
            else:
                self._countContent(len(rest))
        elif len(rest) > self.settings.maxHeaderSize:
            m.headerBuffer = b""
            self._failMessage(HEADERS_TOO_BIG)
            m.inHeaders = False
        else:
            m.headerBuffer = rest

    def _normalizeChunk(self, data: bytes) -> bytes:
        m = self._msg
        assert m is not None
        # A CR at the end of a chunk may pair with an LF at the start of the
        # next one; hold it back until then.
        data = m.heldCR + data if m.heldCR else data
        m.heldCR = b""
        if data.endswith(b"\r") and not self._chunkLast:
            m.heldCR = b"\r"
            data = data[:-1]
        if hasBareLineEnding(data):
            data = normalizeLineEndings(data)
        return data

    def _binary(self) -> bool:
        transaction = self.session.transaction
        return transaction is not None and (
            transaction.mailParams.get("BODY") == "BINARYMIME"
        )

    def _chunkEnded(self) -> None:
        """
        The whole chunk has been read: back to commands, then answer once
        the hooks for its content have run.
        """
        self._stopDeadline()
        self._state = COMMAND
        self.setLineMode()
        refusal = self._chunkRefusal
        if refusal is not None:
            self._hooks.later(lambda: self._chunkAnswered(refusal))
        elif self._chunkLast:
            self._verb = "EOM"
            self._hooks.later(self._lastChunkStep)
        else:
            self._hooks.later(self._chunkAcknowledged)

    def _chunkAnswered(self, reply: Reply) -> None:
        self._state = COMMAND
        self._write(reply)

    def _chunkAcknowledged(self) -> None:
        m = self._msg
        assert m is not None
        if m.failure is not None:
            failure = m.failure
            self._endMessage()
            self._messageDone(failure)
            return
        self._messageDone(
            Reply(250, f"{self._chunkSize} octets received", enhanced="2.0.0")
        )

    def _lastChunkStep(self) -> None:
        m = self._msg
        assert m is not None
        if m.inHeaders and m.failure is None:
            if m.headerBuffer:
                line, m.headerBuffer = m.headerBuffer, b""
                self._contentLine(line, b"")
            if m.inHeaders:
                self._startBody()
        self._hooks.later(self._endOfData)

    # -- hooks and refusal --------------------------------------------------

    def _contentHook(self, name: str, args: tuple[Any, ...]) -> None:
        """
        Call HEADER, EOH or BODY unless the message was already refused; a
        failure refuses the message.
        """
        m = self._msg
        assert m is not None
        if m.failure is not None:
            return
        if name == "HEADER":
            self._recordHeader(args)
        if name in self._skipHooks:
            return

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self._failMessage(self._hooks.failureReply(name, value))

        self._hooks.invoke(name, args, done)

    def _recordHeader(self, header: tuple[str, str]) -> None:
        transaction = self.session.transaction
        if transaction is not None:
            transaction.headers.append(header)

    def _failMessage(self, reply: Reply) -> None:
        """
        Refuse the message being received: no more content hooks, ABORT now,
        C{reply} once the client has sent the end of the data.
        """
        m = self._msg
        assert m is not None
        if m.failure is not None:
            return
        m.failure = reply
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
        m = self._msg
        assert m is not None
        m.size += size
        limit = self.settings.maxMessageSize
        if limit and m.size > limit:
            self._failMessage(TOO_BIG)
        return m.failure is None

    # -- the end ------------------------------------------------------------

    def _endOfData(self) -> None:
        m = self._msg
        assert m is not None
        transaction = self.session.transaction
        if transaction is not None:
            transaction.size = m.size
        if m.failure is not None:
            failure = m.failure
            self._endMessage()
            self._messageDone(failure)
            return

        def answered(reply: Reply) -> None:
            if transaction is not None and self.factory.log.infoEnabled:
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
