"""
The relay's spool mode: the message is held in an unnamed temporary file
until EOM, then sent upstream as the handlers' L{modifications
<esmtpkit.session.Transaction.modifications>} make it (L{ModifiedMessage}),
with the upstream envelope redone when the sender or recipients changed.

L{SpoolingRelay} is a mixin of L{Relay <esmtpkit.handlers.Relay>}: it uses
the relay's upstream session, commands and replies.
"""

from __future__ import annotations

import tempfile
from collections import deque
from typing import IO, TYPE_CHECKING, Any

from twisted.logger import Logger

from ...core.modifications import declaresModifications, modifiedBefore
from ...core.results import PerRecipient
from ...core.rewrite import Envelope, ModifiedMessage
from ...received import receivedHeader
from ...reply import Reply, ReplyError
from ...session import Transaction
from .client import DotStuffer, UpstreamError, UpstreamLost
from .upstream import errorReply

if TYPE_CHECKING:
    from collections.abc import Sequence

    from twisted.internet.defer import Deferred

    from ...session import Params, Recipient
    from .upstream import UpstreamConfig, UpstreamSession

__all__ = ["SPOOL_MODES", "QUARANTINED", "SPOOL_FAILED", "SpoolingRelay"]

log = Logger(namespace="esmtpkit")

SPOOL_MODES = ("auto", "always", "never")
"""The relay's C{spool} values: spool when a handler before it declares
modifications, always, or never (stream as the message arrives)."""

QUARANTINED = Reply(550, "Message refused: held by a content filter", enhanced="5.7.1")
"""The reply to a message a handler quarantined: a relay has nowhere to
hold it, so it is refused (the reason is logged, not told the client)."""

SPOOL_FAILED = Reply(452, "Insufficient system storage", enhanced="4.3.1")
"""The reply when the spool file cannot be made or written."""

ALL_DELETED = Reply(
    250, "Message accepted: every recipient was deleted", enhanced="2.0.0"
)


def spoolMode(value: str) -> str:
    """
    Check a C{spool} value.

    @raise ValueError: it is not one of L{SPOOL_MODES}.
    """
    if value not in SPOOL_MODES:
        raise ValueError(f"spool {value!r} is not one of {', '.join(SPOOL_MODES)}")
    return value


def _fold(replies: list[Reply]) -> Reply | None:
    # The first failure, else the first acceptance.
    for reply in replies:
        if reply.code >= 400:
            return reply
    return replies[0] if replies else None


class SpoolingRelay:
    """
    The spool mode of the relay, and its replies per recipient (a mixin;
    see the module docstring).

    @ivar spool: C{"auto"}, C{"always"} or C{"never"}.
    @ivar spoolDir: where spool files are made (L{None}: C{TMPDIR}).
    """

    spool: str
    spoolDir: str | None
    config: UpstreamConfig
    received: bool
    session: Any
    _spoolFile: IO[bytes] | None
    _upstream: UpstreamSession | None
    _sender: str | None
    _accepted: list[str]
    _refused: dict[str, Reply]
    _stuffer: DotStuffer | None

    if TYPE_CHECKING:  # the relay's own, which this mixin uses

        def _open(self) -> UpstreamSession | None: ...
        async def _connect(self) -> UpstreamSession: ...
        def _drop(self) -> None: ...
        def _resetTransaction(self) -> None: ...
        def _passOn(self, reply: Reply, expected: int = 2) -> Reply: ...
        def _failed(self, error: UpstreamError) -> Reply: ...
        async def _command(self, line: str) -> Reply: ...
        async def _sendEnvelope(
            self, sender: str, senderParams: Params, recipients: Sequence[Recipient]
        ) -> tuple[bool, Reply]: ...
        def _write(self, data: bytes) -> Deferred[None] | None: ...
        async def _endMessage(
            self, upstream: UpstreamSession, stuffer: DotStuffer, accepted: int
        ) -> list[Reply]: ...

    def spools(self) -> bool:
        """
        Whether this transaction's message is spooled: always, never, or
        (C{auto}) when this relay or a handler before it declares
        C{mayModify}.
        """
        if self.spool == "auto":
            return declaresModifications(self) or modifiedBefore(self.session)
        return self.spool == "always"

    def _openSpool(self) -> None:
        self._closeSpool()
        try:
            self._spoolFile = tempfile.TemporaryFile(dir=self.spoolDir)
        except OSError as e:
            self._spoolWarn(e)
            raise ReplyError(SPOOL_FAILED) from None

    def _spoolWrite(self, data: bytes) -> None:
        spool = self._spoolFile
        assert spool is not None
        try:
            spool.write(data)
        except OSError as e:
            self._closeSpool()
            self._spoolWarn(e)
            raise ReplyError(SPOOL_FAILED) from None

    def _spoolWarn(self, error: OSError) -> None:
        log.warn(
            "session {session}: relay spool: {error}",
            session=self.session.id,
            error=str(error),
        )

    def _closeSpool(self) -> None:
        spool, self._spoolFile = self._spoolFile, None
        if spool is not None:
            spool.close()

    async def _relaySpooled(self, transaction: Transaction) -> Reply | PerRecipient:
        """
        At EOM: send the spooled message upstream as modified, and answer
        with the upstream's replies.
        """
        spool, self._spoolFile = self._spoolFile, None
        assert spool is not None
        try:
            spool.flush()
            return await self._sendModified(transaction, spool)
        except ReplyError as e:
            return e.reply
        except OSError as e:
            self._drop()
            self._spoolWarn(e)
            return SPOOL_FAILED
        except UpstreamError as e:
            self._drop()
            return self._failed(e)
        finally:
            spool.close()

    async def _sendModified(
        self, transaction: Transaction, spool: IO[bytes]
    ) -> Reply | PerRecipient:
        message = ModifiedMessage(transaction)
        if message.quarantine is not None:
            log.info(
                "session {session}: relay: {id} quarantined ({reason}): refused",
                session=self.session.id,
                id=transaction.id,
                reason=message.quarantine,
            )
            await self._rset()
            return QUARANTINED
        envelope = message.envelope
        changes = transaction._modifications
        if changes is not None and (changes.sender or changes.recipientChanges):
            await self._redoEnvelope(envelope)
        elif self._open() is None:
            await self._redoEnvelope(envelope)  # the session was lost meanwhile
        accepted, refused = self._accepted, self._refused
        if not accepted:
            await self._rset()
            return self._answer(transaction, envelope, [], [], refused)
        upstream = self._open()
        assert upstream is not None
        reply = await self._command("DATA")
        if reply.code != 354:
            self._resetTransaction()
            return self._passOn(reply, expected=3)
        self._stuffer = stuffer = DotStuffer()
        chunks = message.chunks(spool)
        if self.received:
            await self._send(receivedHeader(self.session, transaction))
        spool.seek(0)
        for chunk in chunks:
            await self._send(chunk)
        self._resetTransaction()
        replies = await self._endMessage(upstream, stuffer, len(accepted))
        return self._answer(transaction, envelope, accepted, replies, refused)

    async def _send(self, data: bytes) -> None:
        written = self._write(data)
        if written is not None:
            await written

    async def _rset(self) -> None:
        self._resetTransaction()
        if self._open() is None:
            return
        try:
            reply = await self._command("RSET")
        except UpstreamError:
            reply = None
        if reply is None or reply.code != 250:
            self._drop()

    async def _redoEnvelope(self, envelope: Envelope) -> None:
        """
        Make the upstream transaction the modified envelope's: RSET, MAIL
        and each RCPT again. Recipients refused are kept in C{_refused};
        a refused MAIL refuses the message.
        """
        await self._rset()
        sent, reply = await self._sendEnvelope(
            envelope.sender, envelope.senderParams, envelope.recipients
        )
        if not sent:
            raise ReplyError(reply)

    def _answer(
        self,
        transaction: Transaction,
        envelope: Envelope,
        accepted: list[str],
        replies: list[Reply],
        refused: dict[str, Reply],
    ) -> Reply | PerRecipient:
        """
        The reply for each of the client's recipients: the upstream's for
        it when it is still in the envelope; for one a handler deleted, the
        replies for the recipients it added (the first failure, else an
        acceptance; an acceptance when none was added).
        """
        outcome: dict[str, Reply] = dict(refused)
        for index, address in enumerate(accepted):
            outcome[address.lower()] = replies[index if self.config.lmtp else 0]
        clients = {r.address.lower() for r in transaction.recipients}
        added = [
            outcome[r.address.lower()]
            for r in envelope.recipients
            if r.address.lower() not in clients and r.address.lower() in outcome
        ]
        kept = {r.address.lower() for r in envelope.recipients}
        instead = _fold(added) or ALL_DELETED
        if not clients - kept and instead.code >= 400:
            log.warn(
                "session {session}: relay: a recipient a handler added was "
                "not delivered: {reply}",
                session=self.session.id,
                reply=f"{instead.code} {instead.text}",
            )
        out = [
            outcome.get(r.address.lower(), instead)
            if r.address.lower() in kept
            else instead
            for r in transaction.recipients
        ]
        if len({(r.code, r.enhanced, r.text) for r in out}) == 1 and out:
            return out[0]
        return PerRecipient(out)

    def _perRecipient(
        self,
        recipients: list[Any],
        accepted: list[str],
        replies: list[Reply],
        refused: dict[str, Reply],
    ) -> PerRecipient:
        byAddress: dict[str, deque[Reply]] = {}
        for index, address in enumerate(accepted):
            reply = replies[index] if self.config.lmtp else replies[0]
            byAddress.setdefault(address.lower(), deque()).append(reply)
        out: list[Reply] = []
        lost = errorReply(UpstreamLost("recipient not sent upstream"))
        for recipient in recipients:
            key = recipient.address.lower()
            waiting = byAddress.get(key)
            if waiting:
                out.append(waiting.popleft())
            else:
                out.append(refused.get(key, lost))
        return PerRecipient(out)
