"""
The message steps of the milter server face: header fields, the end of the
header section and body chunks through the L{Content} pipeline, and the end
of the body, whose result becomes the modification requests and the verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from ..core.content import Content
from ..reply import Reply
from . import wire
from .macros import hiddenHeaders
from .replies import ModificationRefused, modificationPackets

if TYPE_CHECKING:
    from ..core.conversation import Conversation
    from ..core.results import MessageResult
    from .macros import MilterSession
    from .negotiate import Negotiated

__all__ = ["MessageSteps"]

log = Logger(namespace="esmtpkit")

_CONTINUE = wire.packet(wire.CONTINUE)
_SKIP = wire.packet(wire.SKIP)
_TEMPFAIL = wire.packet(wire.TEMPFAIL)
_CRLF = b"\r\n"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class MessageSteps:
    """
    The steps of one message, for L{MilterConnection
    <esmtpkit.milter.server.MilterConnection>}.
    """

    session: MilterSession
    conversation: Conversation
    negotiated: Negotiated | None
    transport: Any
    _content: Content | None
    _owed: bytes | None
    _closing: bool
    _draining: bool

    def _answer(self, reply: Reply, end: bool = False) -> None:
        raise NotImplementedError

    def _write(self, packet: bytes) -> None:
        raise NotImplementedError

    def _closeIfIdle(self) -> None:
        raise NotImplementedError

    def _message(self) -> Content:
        content = self._content
        if content is None:
            if self.session.transaction is None:
                raise wire.MilterProtocolError("message content without a transaction")
            content = self._content = Content(self.conversation)
        return content

    def _header(self, data: bytes) -> None:
        name, value = wire.splitStrings(data, 2)
        content = self._message()
        self.session.learn()
        # Folded lines come with LF alone; the message has CRLF.
        folded = value.replace(b"\r\n", b"\n")
        rawValue = folded.replace(b"\n", _CRLF)
        assert self.negotiated is not None
        if not self.negotiated.leadingSpace and rawValue:
            rawValue = b" " + rawValue
        raw = name + b":" + rawValue + _CRLF
        unfolded = folded.replace(b"\n", b"").lstrip(b" \t")
        content.header(_text(name), _text(unfolded), raw)
        self._contentAnswer()

    def _eoh(self, data: bytes) -> None:
        content = self._message()
        self.session.learn()
        if content.inHeaders:
            content.endHeaders(_CRLF)
        self._contentAnswer()

    def _body(self, data: bytes) -> None:
        content = self._message()
        if content.inHeaders:
            content.endHeaders(_CRLF)
        content.body(data)
        self._contentAnswer()

    def _contentAnswer(self) -> None:
        """
        Once the content hooks queued so far have run, answer the content
        event: the refusal if the message was refused, SMFIR_SKIP if BODY
        wants no more, else SMFIR_CONTINUE.
        """
        if self._owed is None:
            return
        self.conversation.hooks.later(self._contentAnswered)

    def _contentAnswered(self) -> None:
        content = self._content
        if content is not None and content.failure is not None:
            self._answer(content.failure)
            return
        assert self.negotiated is not None
        if (
            content is not None
            and content.skipBody
            and self._owed == wire.BODY
            and self.negotiated.skip
        ):
            self._write(_SKIP)
        elif self._owed is not None and not self._closing:
            self._write(_CONTINUE)

    def _endOfBody(self, data: bytes) -> None:
        content = self._message()
        if content.inHeaders:
            content.endHeaders(_CRLF)
        if data:
            content.body(data)
        self.session.learn()
        content.finish(self._messageDone)

    def _messageDone(self, result: MessageResult) -> None:
        content = self._content
        self._content = None
        self.session.macros.forgetMessage()
        reply = result.whole if result.whole is not None else result.single()
        handler = self.conversation.handler
        transaction = content.transaction if content is not None else None
        if (
            reply.code < 400
            and transaction is not None
            and transaction.modified
            and not (handler is not None and handler.disconnect)
            and self._owed is not None
        ):
            assert self.negotiated is not None
            packets = modificationPackets(
                transaction.modifications,
                self.negotiated.actions,
                self.negotiated.leadingSpace,
                insertOffset=hiddenHeaders(self.session.macros),
            )
            try:
                first = next(packets, None)
            except ModificationRefused as e:
                log.error(
                    "session {session}: {problem}; message tempfailed",
                    session=self.session.id,
                    problem=str(e),
                )
                self._write(_TEMPFAIL)
                return
            except Exception:
                log.failure(
                    "session {session}: the message's changes could not be sent",
                    session=self.session.id,
                )
                self._write(_TEMPFAIL)
                return
            if first is not None:
                self._sendModifications(first, packets, reply)
                return
        self._answer(reply, end=True)
        if self._draining:
            self._closeIfIdle()

    def _sendModifications(
        self, first: bytes, rest: Iterator[bytes], reply: Reply
    ) -> None:
        """
        Write the modification requests, then the verdict. (A replacement
        body is read in chunks as it is written; the transport buffers
        what the MTA has not read yet.)
        """
        transport = self.transport
        try:
            transport.write(first)
            for packet in rest:
                transport.write(packet)
        except Exception:
            # A body source that fails half way: nothing is accepted.
            log.failure(
                "session {session}: the message's changes could not be sent",
                session=self.session.id,
            )
            self._write(_TEMPFAIL)
            return
        self._answer(reply, end=True)
