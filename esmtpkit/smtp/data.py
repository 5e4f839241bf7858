"""
Message content on the SMTP wire: L{DataReader} frames the text after DATA
(header lines in line mode, the body in raw mode, dot-stuffing and the
terminator), L{ChunkReader} the chunks of BDAT (exactly the announced size,
in raw mode). Both hand what they find to the conversation's L{Content}
pipeline, and apply the server's bare-line-ending policy on the way.

SMTP answers a refused message only after its end: the readers keep
reading to the end of the data (or of the chunk) whatever the content
pipeline decided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.results import MessageResult
from ..reply import Reply
from .framing import (
    BodyScanner,
    firstBareLineEnding,
    hasBareLineEnding,
    normalizeLineEndings,
)

if TYPE_CHECKING:
    from ..core.content import Content
    from .protocol import ESMTPProtocol

__all__ = ["DataReader", "ChunkReader", "BARE_LINE_ENDING"]

BARE_LINE_ENDING = Reply(
    550, "Bare CR or LF in message; lines must end with CRLF", enhanced="5.5.2"
)


class DataReader:
    """
    Reads the message after DATA was answered with 354.

    @ivar content: the message's content pipeline.
    """

    __slots__ = ("_wire", "content", "_scanner", "_lineStartCRLF", "_deadline")

    chunking = False

    def __init__(self, wire: ESMTPProtocol, content: Content) -> None:
        self._wire = wire
        self.content = content
        self._scanner: BodyScanner | None = None  # made when the body starts
        self._lineStartCRLF = True
        wire.MAX_LENGTH = wire.settings.maxHeaderSize
        deadline = wire._deadline or wire.requestDeadline()
        self._deadline = deadline
        deadline.start()
        if "HEADER" in wire.conversation.skippable:
            # The first read may hold the whole header section: see
            # rawDataReceived.
            wire.setRawMode()

    # -- the header section -------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """
        One line of the header section (without its line ending,
        dot-stuffing intact).
        """
        wire = self._wire
        atLineStart = self._lineStartCRLF
        bare = wire.bareLineEnding
        self._lineStartCRLF = not bare
        self._deadline.extend(len(line) + 2)
        if atLineStart and line[:1] == b".":
            if line == b"." and not bare:
                self._end()
                return
            line = line[1:]
        if bare or b"\r" in line:
            if wire.settings.bareLineEndings == "reject":
                self.content.refuse(BARE_LINE_ENDING)
                self.content.endHeaders()
                self._startBody(atLineStart=not bare)
                return
            line = line.replace(b"\r", b"")
        if not self.content.headerLine(line, b"\r\n"):
            self._startBody()

    def lineTooLong(self) -> bool:
        """
        A header line is longer than the header section may be: refuse the
        message and read the rest as body bytes that start mid-line (the
        line may end right before the terminator).
        """
        if self._scanner is not None:
            return False
        self.content.headerTooLong()
        self._startBody(atLineStart=False)
        return True

    def _startBody(self, atLineStart: bool | None = None) -> None:
        """
        The header section is over: read the body raw.

        @param atLineStart: whether the body starts right after a CRLF,
            where a dot may end the data; by default, whether the last line
            read ended with CRLF (a bare LF, even normalised, never makes a
            line start: only <CR><LF>.<CR><LF> ends DATA).
        """
        wire = self._wire
        wire.MAX_LENGTH = wire.settings.maxLineLength
        start = self._lineStartCRLF if atLineStart is None else atLineStart
        self._scanner = BodyScanner(start)
        wire.setRawMode()

    # -- raw bytes ----------------------------------------------------------

    def _headerData(self, data: bytes) -> None:
        """
        The first bytes after 354, read raw (only for a handler without a
        HEADER hook). If they hold a plain header section whole -- no line
        starting with a dot, no bare CR or LF -- it is taken in one piece
        (when the pipeline takes it), with the same effect as reading it
        line by line; otherwise, and for the rest of the message, lines are
        read one at a time.
        """
        wire = self._wire
        end = data.find(b"\r\n\r\n") + 2
        if end > 1:
            section = data[: end + 2]
            if (
                section[:1] != b"."
                and b"\n." not in section
                and not hasBareLineEnding(section)
                and self.content.headerSection(section)
            ):
                self._deadline.extend(len(section))
                self._startBody()  # raw mode still, for the body
                wire.pushBack(data[len(section) :])
                return
        wire.setLineMode(data)

    def rawDataReceived(self, data: bytes) -> None:
        """
        Raw bytes as they were read: the start of the header section (see
        L{_headerData}), or the body.
        """
        if self._scanner is None:
            self._headerData(data)
            return
        wire = self._wire
        self._deadline.extend(len(data))
        assert self._scanner is not None
        pieces, leftover = self._scanner.feed(data)
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if body and hasBareLineEnding(body):
            if wire.settings.bareLineEndings == "reject":
                # The bytes before it count first, as they would had they
                # come in a read of their own: the refusal must not depend
                # on how TCP split the stream (a size limit passed before
                # the bare line ending wins).
                cut = firstBareLineEnding(body)
                self.content.body(body[:cut])
                self.content.refuse(BARE_LINE_ENDING)
                body = body[cut:]
            else:
                body = normalizeLineEndings(body)
        self.content.body(body)
        if leftover is not None:
            wire.setLineMode(leftover)
            wire.verb = "EOM"
            wire.readerDone()
            self.content.finish(wire.messageDone)

    def _end(self) -> None:
        """
        The terminating dot: back to commands, and answer once the hooks
        for the content have run.
        """
        wire = self._wire
        wire.verb = "EOM"
        wire.readerDone()
        self.content.finish(wire.messageDone)


class ChunkReader:
    """
    Reads BDAT chunks: the content of one message across chunks, or, with
    no content, a chunk to throw away before answering its refusal.

    @ivar content: the message's content pipeline, or L{None} for a chunk
        to discard.
    """

    __slots__ = (
        "_wire",
        "content",
        "_remaining",
        "_last",
        "_refusal",
        "_size",
        "_heldCR",
        "_binary",
    )

    chunking = True

    def __init__(self, wire: ESMTPProtocol, content: Content | None) -> None:
        self._wire = wire
        self.content = content
        self._remaining = 0
        self._last = False
        self._refusal: Reply | None = None
        self._size = 0
        self._heldCR = b""
        transaction = content.transaction if content is not None else None
        self._binary = (
            transaction is not None
            and transaction.mailParams.get("BODY") == "BINARYMIME"
        )

    def read(self, size: int, last: bool, refusal: Reply | None) -> None:
        """
        Read the next C{size} bytes as a chunk: content of the message, or,
        with a C{refusal}, bytes to throw away before answering with it.
        Chunk bytes are never read as commands.
        """
        wire = self._wire
        self._remaining = size
        self._last = last
        assert refusal is not None or self.content is not None
        self._refusal = refusal
        self._size = size
        wire.readWith(self)
        deadline = wire.requestDeadline()
        deadline.stop()
        deadline.start()
        if size == 0:
            self._ended()

    def lineReceived(self, line: bytes) -> None:
        raise AssertionError("BDAT chunks are read raw")

    def lineTooLong(self) -> bool:
        return False

    def rawDataReceived(self, data: bytes) -> None:
        remaining = self._remaining
        wire = self._wire
        if len(data) > remaining:
            wire.pushBack(data[remaining:])
            data = data[:remaining]
        self._remaining = remaining - len(data)
        wire.requestDeadline().extend(len(data))
        if self._refusal is None:
            assert self.content is not None
            if wire.settings.bareLineEndings == "normalize" and not self._binary:
                data = self._normalize(data)
            self.content.feed(data)
        if self._remaining == 0:
            self._ended()

    def _normalize(self, data: bytes) -> bytes:
        # A CR at the end of a chunk may pair with an LF at the start of the
        # next one; hold it back until then.
        data = self._heldCR + data if self._heldCR else data
        self._heldCR = b""
        if data.endswith(b"\r") and not self._last:
            self._heldCR = b"\r"
            data = data[:-1]
        if hasBareLineEnding(data):
            data = normalizeLineEndings(data)
        return data

    def _ended(self) -> None:
        """
        The whole chunk has been read: back to commands, then answer once
        the hooks for its content have run.
        """
        wire = self._wire
        wire.requestDeadline().stop()
        wire.readerDone()
        wire.setLineMode()
        hooks = wire.conversation.hooks
        refusal = self._refusal
        if refusal is not None:
            hooks.later(lambda: wire.chunkAnswered(refusal))
        elif self._last:
            wire.verb = "EOM"
            assert self.content is not None
            self.content.finish(wire.messageDone)
        else:
            hooks.later(self._acknowledged)

    def _acknowledged(self) -> None:
        content = self.content
        assert content is not None
        wire = self._wire
        if content.failure is not None:
            wire.messageDone(MessageResult((content.failure,), content.failure))
            return
        wire.chunkAnswered(
            Reply(250, f"{self._size} octets received", enhanced="2.0.0")
        )
