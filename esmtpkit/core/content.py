"""
L{Content}: a message's content on its way to the handler, whatever wire
brought it.

A face hands over what its framing found: header lines (L{headerLine}), a
whole plain header section (L{headerSection}), header fields its wire has
parsed already (L{header}: a milter's name and value), content bytes of
unknown shape (L{feed}: header lines are split out of them), body bytes
(L{body}), and the end (L{finish}). The pipeline unfolds the header fields, calls
HEADER, EOH, BODY (in chunks of at most C{settings.chunkSize}) and finally
EOM through the hook queue, counts every byte against the size limits, and
refuses the message when a limit is passed or a content hook refuses.

Refusal is not an answer: L{refuse} stops the content hooks and ends the
transaction with ABORT at once, and L{failure} keeps the reply. When the
reply goes out is the face's choice (SMTP: after the end of the data, which
is still read).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from ..reply import Reply
from .headers import BODY, END, HeaderParser, parseHeaderSection

if TYPE_CHECKING:
    from collections.abc import Callable

    from .conversation import Conversation
    from .results import MessageResult

__all__ = ["Content", "TOO_BIG", "HEADERS_TOO_BIG", "SKIP_BODY"]

TOO_BIG = Reply(
    552, "Message size exceeds fixed maximum message size", enhanced="5.3.4"
)
HEADERS_TOO_BIG = Reply(552, "Message header section too large", enhanced="5.3.4")


class _SkipBody:
    def __repr__(self) -> str:
        return "SKIP_BODY"


SKIP_BODY: Any = _SkipBody()
"""
What a BODY hook returns to say it wants no more of this message's body:
BODY is not called again for it (the bytes are still counted), and a
milter face tells the MTA to stop sending them (SMFIR_SKIP).
"""


class Content:
    """
    The content of one message (one DATA, or one series of BDAT chunks).

    @ivar transaction: the transaction the message belongs to.
    @ivar recipients: how many recipients it had when the content began
        (a refusal answers each of them).
    @ivar inHeaders: whether the header section is still being read.
    @ivar size: the content bytes counted so far.
    @ivar failure: the reply that refuses the message, once refused.
    @ivar skipBody: whether BODY returned L{SKIP_BODY}: it gets no more.
    """

    __slots__ = (
        "_conversation",
        "transaction",
        "recipients",
        "inHeaders",
        "size",
        "failure",
        "skipBody",
        "_parser",
        "_rawHeaders",
        "_partial",
        "_bodyQueue",
        "_bodyPos",
    )

    def __init__(self, conversation: Conversation) -> None:
        transaction = conversation.session.transaction
        assert transaction is not None
        self._conversation = conversation
        self.transaction = transaction
        self.recipients = len(transaction.recipients)
        self.inHeaders = True
        self.size = 0
        self.failure: Reply | None = None
        self.skipBody = False
        # Made for the first header line read alone (see headerLine).
        self._parser: HeaderParser | None = None
        self._rawHeaders = bytearray()
        self._partial = b""  # an incomplete header line (see feed)
        self._bodyQueue = b""
        self._bodyPos = 0

    # -- the header section -----------------------------------------------

    def headerSection(self, section: bytes) -> bool:
        """
        Take a whole header section at once, if it is a plain one within
        the limits: every line a field or a continuation, each ending with
        CRLF, the last one empty. The effect is that of L{headerLine} for
        each line.

        @return: whether it was taken; if not, nothing changed (hand over
            the lines one by one).
        """
        settings = self._conversation.settings
        total = len(section)
        limit = settings.maxMessageSize
        if total > settings.maxHeaderSize or (limit and self.size + total > limit):
            return False
        fields = parseHeaderSection(section[:-2])
        if fields is None:
            return False
        self._rawHeaders += section
        self.size += total
        self.transaction.headers.extend(fields)
        self.endHeaders()
        return True

    def headerLine(self, line: bytes, ending: bytes) -> bool:
        """
        One line of the header section, without C{ending}, its line ending
        (kept in the raw headers); dot-stuffing and line endings already
        dealt with by the framing.

        @return: whether the header section goes on (if not, this line
            ended it; a line that is not a header is the body's first).
        """
        parser = self._parser
        if parser is None:
            parser = self._parser = HeaderParser()
        kind, completed = parser.line(line)
        if kind != BODY:
            raw = self._rawHeaders
            raw += line
            raw += ending
            if not self.count(len(line) + len(ending)):
                self.endHeaders()
                return False
            if len(raw) > self._conversation.settings.maxHeaderSize:
                self.refuse(HEADERS_TOO_BIG, "header-size")
                self.endHeaders()
                return False
        if completed is not None:
            if "HEADER" in self._conversation.skippable:
                if self.failure is None:
                    self.transaction.headers.append(completed)
            else:
                self._conversation.hooks.later(
                    lambda: self._contentHook("HEADER", completed)
                )
        if kind == END:
            self.endHeaders()
            return False
        if kind == BODY:
            self.endHeaders()
            self.body(line + ending)
            return False
        return True

    def header(self, name: str, value: str, raw: bytes) -> None:
        """
        One header field that the wire has parsed already (a milter gives
        name and value, not lines): the effect is that of L{headerLine} for
        its lines.

        @param value: the value as L{Transaction.headers
            <esmtpkit.session.Transaction.headers>} holds it (unfolded, no
            leading white space).
        @param raw: the field as it stands in the message, line endings
            included (kept in the raw headers and counted).
        """
        if not self.inHeaders or self.failure is not None:
            self.count(len(raw))
            return
        self._rawHeaders += raw
        if not self.count(len(raw)):
            return
        if len(self._rawHeaders) > self._conversation.settings.maxHeaderSize:
            self.refuse(HEADERS_TOO_BIG, "header-size")
            return
        field = (name, value)
        if "HEADER" in self._conversation.skippable:
            self.transaction.headers.append(field)
        else:
            self._conversation.hooks.later(lambda: self._contentHook("HEADER", field))

    def headerTooLong(self) -> None:
        """
        A header line longer than the header section may be: refuse the
        message (the rest is body bytes, to be counted).
        """
        self.refuse(HEADERS_TOO_BIG, "header-size")
        self.endHeaders()

    def feed(self, data: bytes) -> None:
        """
        Content bytes of any shape (a BDAT chunk): header lines are split
        out of them while the header section lasts, the rest is body.
        """
        if self.failure is not None:
            self.count(len(data))
            return
        if not self.inHeaders:
            self.body(data)
            return
        buffer = self._partial + data if self._partial else data
        pos = 0
        while self.inHeaders and self.failure is None:
            end = buffer.find(b"\n", pos)
            if end < 0:
                break
            lineEnd = end - 1 if end > pos and buffer[end - 1] == 13 else end
            self.headerLine(buffer[pos:lineEnd], buffer[lineEnd : end + 1])
            pos = end + 1
        rest = buffer[pos:]
        if not self.inHeaders:
            self._partial = b""
            if self.failure is None:
                self.body(rest)
            else:
                self.count(len(rest))
        elif len(rest) > self._conversation.settings.maxHeaderSize:
            self._partial = b""
            self.refuse(HEADERS_TOO_BIG, "header-size")
            self.inHeaders = False
        else:
            self._partial = rest

    def endHeaders(self, separator: bytes = b"") -> None:
        """
        The header section is over: EOH comes next.

        @param separator: the empty line that ended it, if the face has not
            handed it over already (kept in the raw headers and counted).
        """
        self.inHeaders = False
        if separator and self.failure is None:
            self._rawHeaders += separator
            self.count(len(separator))
        if self.failure is not None:
            return
        hooks = self._conversation.hooks
        if self._parser is not None:
            hooks.later(self._flushHeader, self._eohStep)
        elif "EOH" in self._conversation.skippable and hooks.idle:
            self._eohStep()  # nothing to call, nothing to wait for
        else:
            hooks.later(self._eohStep)

    def _flushHeader(self) -> None:
        completed = self._parser.finish() if self._parser is not None else None
        if completed is not None:
            self._contentHook("HEADER", completed)

    def _eohStep(self) -> None:
        self.transaction.rawHeaders = bytes(self._rawHeaders)
        self._contentHook("EOH", ())

    # -- the body ---------------------------------------------------------

    def body(self, data: bytes) -> None:
        """
        Bytes of the body, in order; BODY gets them in chunks.
        """
        # Counted as they come, whatever waits for BODY: where the limit is
        # passed must not depend on how the stream was read.
        if data and not self.count(len(data)):
            return
        conversation = self._conversation
        if "BODY" in conversation.skippable or self.skipBody:
            return  # no BODY hook (any more): counted, nothing to hand over
        if self._bodyPos < len(self._bodyQueue):
            data = self._bodyQueue[self._bodyPos :] + data
        self._bodyQueue = data
        self._bodyPos = 0
        conversation.hooks.later(self._pumpBody)

    def _pumpBody(self) -> None:
        """
        Hand the next chunk of queued body bytes to BODY (one hook call per
        step, so a pending BODY stops the pump).
        """
        body, start = self._bodyQueue, self._bodyPos
        if start < len(body):
            size = self._conversation.settings.chunkSize
            piece = body[start : start + size] if start or len(body) > size else body
            self._bodyPos = start + len(piece)
            self._conversation.hooks.now(self._pumpBody)
            self._contentHook("BODY", (piece,))
            return
        self._bodyQueue = b""
        self._bodyPos = 0

    # -- refusal and the end ------------------------------------------------

    def count(self, size: int) -> bool:
        """
        Add C{size} bytes to the message size and refuse the message once it
        passes the limit. Returns whether the message is still wanted.
        """
        self.size += size
        limit = self._conversation.settings.maxMessageSize
        if limit and self.size > limit:
            self.refuse(TOO_BIG, "message-size")
        return self.failure is None

    def refuse(self, reply: Reply, limit: str | None = None) -> None:
        """
        Refuse the message: no more content hooks, ABORT now, C{reply} kept
        in L{failure} for the face to send when it sees fit.

        @param limit: the limit that was passed, if that is why (see
            L{esmtpkit.core.events.LIMITS}).
        """
        if self.failure is not None:
            return
        self.failure = reply
        conversation = self._conversation
        session, events = conversation.session, conversation.events
        if limit is not None:
            for notify in events.limitReached:
                notify(session, limit, f"message over the {limit} limit")
        for notify in events.contentRefused:
            notify(session, session.transaction, reply)
        conversation.hooks.now(conversation.abortStep)

    def finish(self, then: Callable[[MessageResult], None]) -> None:
        """
        The content is complete: once the hooks queued for it have run, EOM
        is asked (unless the message was refused) and C{then} gets the
        reply for each recipient.
        """
        conversation = self._conversation
        if not self.inHeaders or self.failure is not None:
            conversation.hooks.later(partial(conversation.endMessage, self, then))
            return

        def end() -> None:
            # The content ended inside the header section: its last field,
            # then EOH, come before EOM.
            if self._partial:
                line, self._partial = self._partial, b""
                self.headerLine(line, b"")
            if self.inHeaders:
                self.endHeaders()
            conversation.hooks.later(partial(conversation.endMessage, self, then))

        conversation.hooks.later(end)

    def _contentHook(self, name: str, args: tuple[Any, ...]) -> None:
        """
        Call HEADER, EOH or BODY unless the message was already refused; a
        failure refuses the message.
        """
        if self.failure is not None or (self.skipBody and name == "BODY"):
            return
        if name == "HEADER":
            self.transaction.headers.append(args)  # type: ignore[arg-type]
        if name in self._conversation.skippable:
            return
        hooks = self._conversation.hooks

        def done(value: Any) -> None:
            if isinstance(value, Failure):
                self.refuse(hooks.failureReply(name, value))
            elif value is SKIP_BODY and name == "BODY":
                self.skipBody = True

        hooks.invoke(name, args, done)
