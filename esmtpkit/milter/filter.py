"""
L{MilterFilter}: a handler that asks an existing milter (OpenDKIM, rspamd,
ClamAV, SpamAssassin's milter, anything on libmilter) about each SMTP event
and answers with its verdict.

It is meant to stand in a L{Chain <esmtpkit.handlers.Chain>} in front of
the handler that takes the mail (see L{esmtpkit.milter.front}, which
C{--milter} uses): its reply hooks give L{None} (no opinion) when
the milter lets the command through, and a reply when it refuses; its
changes are recorded on C{session.transaction.modifications} at EOM for the
delivering handler to apply.

What the milter's verdicts become:

    continue            no opinion (the next handler answers)
    reject              550 5.7.1 Command rejected (the command refused; in
                        HEADER, EOH or BODY the message)
    tempfail            451 4.7.1 Service unavailable - try again later
    custom reply (y)    that reply, as the milter wrote it
    accept              no opinion, and no more milter calls for this
                        message (for the session, at connect or HELO)
    discard             the message is answered 250 at EOM but the handler
                        behind is not asked to take it (it gets ABORT), so
                        it is not delivered (see L{esmtpkit.milter.front})
    shutdown            421 4.7.0, and the connection is closed

A refusal at connect is kept and given to each MAIL (the client is
greeted, as Postfix does); one at HELO answers that HELO.

When the milter cannot be reached, times out, or breaks the protocol, the
connector's default action applies for the rest of the session: with
C{tempfail} (the default) MAIL, RCPT, DATA and the message get 451 4.7.1,
with C{reject} 550 5.7.1, with C{accept} the milter is left out.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ..core.modifications import Modifications
from ..handler import ESMTPHandler
from ..reply import Reply, ReplyError
from ..session import Params
from . import wire
from .answers import MilterReply, recordEdits
from .client import MilterClient, MilterUnavailable
from .connector import MilterConnector
from .telling import connectInfo, esmtpArgs, headerFields, sessionMacros

__all__ = ["MilterFilter", "MessageFate", "REJECTED", "TEMPFAILED", "SHUT_DOWN"]

REJECTED = Reply(550, "Command rejected", enhanced="5.7.1")
TEMPFAILED = Reply(451, "Service unavailable - try again later", enhanced="4.7.1")
SHUT_DOWN = Reply(421, "Service shutting down", enhanced="4.7.0")
_DEFAULT_REPLIES: dict[str, Reply | None] = {
    "tempfail": TEMPFAILED,
    "reject": REJECTED,
    "accept": None,
}

# The state of the current message, as far as this milter goes.
_NONE = 0  # no message
_ACTIVE = 1  # the milter is asked
_ACCEPTED = 2  # the milter accepted it: not asked any more
_DISCARD = 3  # the milter discards it


class MessageFate:
    """
    What the milters of one connection decided about its messages beyond a
    reply, shared with the L{DiscardGate <esmtpkit.milter.front.DiscardGate>}
    in front of the delivering handler.

    @ivar discarded: the id of the transaction a milter discarded, or
        L{None}.
    """

    __slots__ = ("discarded",)

    def __init__(self) -> None:
        self.discarded: str | None = None


class MilterFilter(ESMTPHandler):
    """
    One SMTP session's connection to one milter.

    @ivar connector: where the milter is and what to do when it fails.
    @ivar client: the milter connection, once made (L{None} before CONNECT
        and when the milter could not be reached).
    @ivar refusal: the reply given to every later MAIL (a refusal at
        connect, or the default action of a milter that failed).
    """

    log = Logger()

    mayModify = True
    """A milter may change the message at its end: a handler after this one
    in a chain that streams the message (the relay) holds it back."""

    def __init__(
        self, connector: MilterConnector, fate: MessageFate | None = None
    ) -> None:
        """
        @param fate: where to mark a discarded message for the handler
            behind (see L{esmtpkit.milter.front}); without one, a discarded
            message is answered 250 here, as a handler on its own.
        """
        super().__init__()
        self.connector = connector
        self.fate = fate
        self.client: MilterClient | None = None
        self.refusal: Reply | None = None
        self._done = False  # no more milter calls this session
        self._message = _NONE
        self._skipBody = False
        self._bodyRest = b""  # less than a body piece, not sent yet
        self._inMessage = False  # the milter saw MAIL and no end since

    # -- asking the milter ------------------------------------------------

    def _usable(self) -> MilterClient | None:
        """
        The milter connection, if it is to be asked; one found broken
        (closed between commands) applies the default action first, so
        check L{refusal} after this.
        """
        client = self.client
        if client is None or self._done:
            return None
        if client.broken is not None:
            self._failed(client.broken.value or MilterUnavailable("gone"))
            return None
        return client

    def _macros(self, **extra: str) -> dict[str, str]:
        macros = sessionMacros(self.session, self.connector.daemonName)
        for name, value in extra.items():
            macros["{" + name + "}"] = value
        return macros

    def _failed(self, error: BaseException) -> Reply | None:
        """
        The milter is gone or broke the protocol: apply the default action
        for the rest of the session.
        """
        client = self.client
        if not self._done:
            self.log.warn(
                "session {id}: milter {name} failed ({error}); default action {action}",
                id=self.session.id,
                name=self.connector.description,
                error=error,
                action=self.connector.defaultAction,
            )
        self._done = True
        if client is not None:
            client.close()
        reply = _DEFAULT_REPLIES[self.connector.defaultAction]
        self.refusal = reply
        if reply is None:
            self._message = _ACCEPTED if self._message else _NONE
        return reply

    async def _ask(self, sending: Any, connection: bool = False) -> Reply | None:
        """
        Wait for the milter's answer to a command and make it a verdict:
        L{None} to let the command through, else the reply refusing it.

        @param connection: whether the command is about the connection
            (connect, HELO), where accept and reject hold for the session.
        """
        try:
            answer: MilterReply = await sending
        except Exception as e:
            return self._failed(e)
        return self._verdict(answer, connection)

    def _verdict(self, answer: MilterReply, connection: bool = False) -> Reply | None:
        """
        The verdict of C{answer} (see L{_ask}).
        """
        action = answer.action
        if action == wire.CONTINUE or action == wire.SKIP:
            return None
        if action == wire.ACCEPT:
            if connection:
                self._finish()
            elif self._message:
                self._message = _ACCEPTED
            return None
        if action == wire.DISCARD:
            if connection:
                self.log.warn(
                    "milter {name}: discard at connect or HELO ignored",
                    name=self.connector.description,
                )
            elif self._message:
                self._message = _DISCARD
            return None
        if action == wire.SHUTDOWN:
            self._finish()
            self.disconnect = True
            return SHUT_DOWN
        if action == wire.CONN_FAIL:
            self._finish()
            self.refusal = TEMPFAILED
            return TEMPFAILED
        if action == wire.REPLYCODE and answer.reply is not None:
            return answer.reply
        return REJECTED if action == wire.REJECT else TEMPFAILED

    def _finish(self) -> None:
        self._done = True
        if self.client is not None:
            self.client.close()

    def _endMessage(self) -> None:
        client = self._usable()
        if self._inMessage and client is not None:
            client.abort()
        self._inMessage = False
        self._message = _NONE
        self._skipBody = False
        self._bodyRest = b""

    # -- the connection ---------------------------------------------------

    async def CONNECT(self) -> Reply | None:
        try:
            self.client = await self.connector.connect()
        except Exception as e:
            self._failed(e)
            return None
        hostname, family, port, address = connectInfo(self.session)
        refusal = await self._ask(
            self.client.connect(hostname, family, port, address, self._macros()),
            connection=True,
        )
        if refusal is not None:
            if refusal.code == 421:
                return refusal
            self.refusal = refusal
            self._finish()
        return None

    async def _hello(self, domain: str) -> Reply | None:
        self._endMessage()
        client = self._usable()
        if client is None:
            return None
        return await self._ask(client.helo(domain, self._macros()), connection=True)

    def HELO(self, domain: str) -> Any:
        return self._hello(domain)

    def EHLO(self, domain: str) -> Any:
        return self._hello(domain)

    def UNKNOWN(self, line: str) -> Any:
        client = self._usable()
        if client is None or not client.wants(wire.UNKNOWN):
            return None
        return self._ask(client.unknown(line))

    def DISCONNECT(self) -> None:
        self._endMessage()
        if self.client is not None:
            self.client.close()

    # -- the transaction --------------------------------------------------

    async def MAIL(self, sender: str, params: Params) -> Reply | None:
        self._endMessage()
        client = self._usable()
        if self.refusal is not None:
            return self.refusal
        if client is None:
            return None
        self._message = _ACTIVE
        self._inMessage = True
        return await self._ask(client.mail(sender, esmtpArgs(params), self._macros()))

    async def RCPT(self, recipient: str, params: Params) -> Reply | None:
        client = self._usable()
        if self.refusal is not None:
            return self.refusal
        if client is None or self._message != _ACTIVE:
            return None
        macros = self._macros(rcpt_addr=recipient)
        return await self._ask(client.rcpt(recipient, esmtpArgs(params), macros))

    async def DATA(self) -> Reply | None:
        client = self._usable()
        if self.refusal is not None:
            return self.refusal
        if client is None or self._message != _ACTIVE:
            return None
        return await self._ask(client.data(self._macros()))

    async def EOH(self) -> None:
        """
        Send the header fields (byte for byte, from the raw header section)
        and the end of the headers.
        """
        client = self._content()
        if client is None:
            return
        transaction = self.session.transaction
        assert transaction is not None
        if client.wants(wire.HEADER):
            leading = bool(client.protocol & wire.SMFIP_HDR_LEADSPC)
            for name, value in headerFields(transaction.rawHeaders, leading):
                self._refuse(await self._ask(client.header(name, value)))
                if self._message != _ACTIVE:
                    return
        self._refuse(await self._ask(client.endOfHeaders(self._macros())))

    async def BODY(self, chunk: bytes) -> None:
        """
        Send the body in pieces of 65,535 octets (the most a milter takes),
        each after the milter answered the one before: a slow milter slows
        the client. Less than a piece left over waits for the next chunk
        (or the end of the message), so esmtpkit's 64 KiB chunks do not
        cost two round trips each.
        """
        client = self._content()
        if client is None or self._skipBody or not client.wants(wire.BODY):
            return
        data = self._bodyRest + chunk if self._bodyRest else chunk
        size = wire.MAX_BODY_CHUNK
        whole = len(data) - len(data) % size
        self._bodyRest = data[whole:]
        for start in range(0, whole, size):
            await self._sendBody(client, data[start : start + size])
            if self._skipBody or self._message != _ACTIVE:
                self._bodyRest = b""
                return

    async def _sendBody(self, client: MilterClient, piece: bytes) -> None:
        try:
            answer = await client.body(piece)
        except Exception as e:
            self._refuse(self._failed(e))
            return
        if answer.action == wire.SKIP:
            self._skipBody = True
            return
        self._refuse(self._verdict(answer))

    def _content(self) -> MilterClient | None:
        client = self._usable() if self._message == _ACTIVE else None
        if self.refusal is not None:
            raise ReplyError(self.refusal)
        return client

    def _refuse(self, refusal: Reply | None) -> None:
        if refusal is not None:
            raise ReplyError(refusal)

    async def EOM(self) -> Reply | None:
        """
        Ask the milter for its verdict on the message; record its changes
        on the transaction's modifications when it lets the message
        through.
        """
        rest, self._bodyRest = self._bodyRest, b""
        client = self._usable()
        if rest and client is not None and self.refusal is None:
            if self._message == _ACTIVE and not self._skipBody:
                try:
                    await self._sendBody(client, rest)
                except ReplyError as e:
                    self._message = _NONE
                    self._inMessage = False
                    return e.reply
        state = self._message
        self._message = _NONE
        self._inMessage = False
        self._skipBody = False
        if self.refusal is not None:
            return self.refusal
        transaction = self.session.transaction
        assert transaction is not None
        if state == _DISCARD:
            return self._discarded()
        client = self._usable()
        if client is None or state != _ACTIVE:
            return None
        try:
            answer: MilterReply = await client.endOfMessage(self._macros())
        except Exception as e:
            return self._failed(e)
        if answer.action == wire.DISCARD:
            return self._discarded()
        verdict = self._verdict(answer)
        if verdict is not None or not answer.edits:
            return verdict
        changes = Modifications()
        leading = bool(client.protocol & wire.SMFIP_HDR_LEADSPC)
        try:
            # First on a record of its own: a change that does not parse
            # leaves the transaction's record untouched.
            recordEdits(answer.edits, changes, leading)
        except wire.MilterProtocolError as e:
            return self._failed(e)
        recordEdits(answer.edits, transaction.modifications, leading)
        return None

    def _discarded(self) -> Reply | None:
        transaction = self.session.transaction
        ident = transaction.id if transaction is not None else ""
        self.log.info(
            "session {id}: milter {name} discarded message {message}",
            id=self.session.id,
            name=self.connector.description,
            message=ident,
        )
        if self.fate is not None:
            self.fate.discarded = ident
            return None
        return Reply(250, f"Message accepted for delivery as {ident}", enhanced="2.0.0")

    def ABORT(self) -> None:
        self._endMessage()
