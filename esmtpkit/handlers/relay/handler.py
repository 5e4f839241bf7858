"""
L{Relay}: forward each transaction to an upstream SMTP or LMTP server, as
an SMTP proxy: each command is mirrored upstream as the client sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...core.results import PerRecipient
from ...handler import ESMTPHandler, _unknownParameter
from ...received import receivedHeader
from ...reply import HookResult, Reply, ReplyError
from ...session import Params, Recipient
from .client import DotStuffer, UpstreamError, UpstreamLost, UpstreamProtocolError
from .options import RelayOptions
from .spool import SpoolingRelay, spoolMode
from .upstream import (
    UpstreamConfig,
    UpstreamSession,
    errorReply,
    mailParameters,
    openSession,
    rcptParameters,
)

__all__ = ["Relay"]

log = Logger(namespace="esmtpkit")

MODIFIED = Reply(
    451,
    "Requested action aborted: the relay cannot apply message modifications",
    enhanced="4.3.0",
)
"""The reply to a message modified although it was not spooled."""


class Relay(SpoolingRelay, ESMTPHandler):
    """
    Forwards every transaction to one upstream server, command by command.

    The upstream session opens at the client's first MAIL (EHLO with the
    server's host name, STARTTLS, AUTH) and serves the client's further
    transactions; it ends with QUIT when the client goes. MAIL and each
    RCPT are sent upstream when the client sends them, and the client gets
    the upstream's reply (code, enhanced code and text), so a recipient the
    upstream refuses is refused at RCPT. DATA (or the client's first BDAT)
    sends DATA upstream; the message then streams through, dot-stuffed,
    after a C{Received:} header, with flow control both ways: a BODY hook
    waits while the upstream's connection has a full buffer, and the
    client's input waits with it, so a message of any size costs the relay
    about one chunk of memory. The end of the message is answered only
    with the upstream's final reply (under LMTP, a reply per recipient, as
    a L{PerRecipient}).

    Whatever goes wrong upstream is a temporary failure for the client:
    unreachable, 451 4.4.1; no reply in time, 451 4.4.2; the connection
    lost, 451 4.4.2; a 421, the same text as 451. Nothing is acknowledged
    that the upstream did not take.

    In spool mode (C{spool="always"}, or C{"auto"} when a handler before
    it declares C{mayModify}) the message is held in an unnamed temporary
    file instead, and at EOM sent upstream as the L{modifications
    <esmtpkit.session.Transaction.modifications>} make it, the envelope
    redone if it changed; a quarantined message is refused (550 5.7.1).
    A message modified although it streamed is refused (451 4.3.0).

    Under C{twistd esmtpkit}, L{RelayOptions} are its options
    (C{--handler-option host=mx.example --handler-option tls=required}).
    """

    Options = RelayOptions

    @classmethod
    def fromHandlerOptions(cls, options: RelayOptions) -> Any:
        """
        The handler factory for C{twistd esmtpkit}: the upstream
        configuration is checked and made once, at start-up.
        """
        keywords = options.relayKeywords()
        return lambda: cls(**keywords)

    def __init__(
        self,
        host: str = "localhost",
        port: int | None = None,
        *,
        tls: str = "opportunistic",
        verify: bool = True,
        caFile: str | None = None,
        tlsName: str | None = None,
        user: str | None = None,
        password: str | None = None,
        insecureAuth: bool = False,
        lmtp: bool = False,
        connectTimeout: float = 20.0,
        commandTimeout: float = 50.0,
        dataTimeout: float = 50.0,
        received: bool = True,
        spool: str = "auto",
        spoolDir: str | None = None,
        reactor: Any = None,
        config: UpstreamConfig | None = None,
    ) -> None:
        """
        @param host: the upstream server's host name or address, or the
            path of its unix socket (starting with C{/}; LMTP, say).
        @param port: its port (default 25, or 24 with C{lmtp}).
        @param tls: STARTTLS upstream: C{"required"} (else 451 4.7.5),
            C{"opportunistic"} (when offered; the certificate is not
            verified) or C{"off"}.
        @param verify: under C{"required"}, verify the upstream's
            certificate against C{caFile} (or the system's CAs) and
            C{tlsName} (or C{host}).
        @param user: authenticate upstream (AUTH PLAIN, else LOGIN) with
            C{user} and C{password}; only over TLS unless C{insecureAuth}.
        @param lmtp: the upstream speaks LMTP.
        @param connectTimeout: seconds to connect.
        @param commandTimeout: seconds for each reply to a command.
        @param dataTimeout: seconds for the upstream to take each chunk of
            the message, and for its reply at the end. Keep all three below
            the server's hook timeout (60 s by default), which otherwise
            answers 451 4.3.0 first.
        @param received: put a C{Received:} header on each message.
        @param spool: C{"auto"} (spool when this handler or one before it
            in a chain declares C{mayModify}), C{"always"} or C{"never"}.
        @param spoolDir: where spool files are made (L{None}: C{TMPDIR}).
        @param reactor: the reactor to connect with (the global one by
            default).
        @param config: an L{UpstreamConfig} to use instead of the
            connection arguments (shared by the handlers of one server).
        @raise ValueError: an argument is wrong.
        """
        super().__init__()
        if config is None:
            config = UpstreamConfig(
                host,
                port if port is not None else (24 if lmtp else 25),
                tls=tls,
                verify=verify,
                caFile=caFile,
                tlsName=tlsName,
                user=user,
                password=password,
                insecureAuth=insecureAuth,
                lmtp=lmtp,
                connectTimeout=connectTimeout,
                commandTimeout=commandTimeout,
                dataTimeout=dataTimeout,
            )
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.received = received
        self.spool = spoolMode(spool)
        self.spoolDir = spoolDir
        self._spoolFile = None
        self.reactor = reactor
        self._upstream: UpstreamSession | None = None
        self._sender: str | None = None  # the upstream transaction's sender
        self._accepted: list[str] = []  # recipients the upstream accepted
        self._refused: dict[str, Reply] = {}  # refused when the envelope was redone
        self._stuffer: DotStuffer | None = None  # while the message streams

    # -- the upstream session -------------------------------------------------

    def _open(self) -> UpstreamSession | None:
        upstream = self._upstream
        if upstream is not None and upstream.usable:
            return upstream
        self._upstream = None
        self._resetTransaction()
        return None

    async def _connect(self) -> UpstreamSession:
        upstream = self._open()
        if upstream is None:
            upstream = await openSession(
                self.config, self.session.hostname, self.reactor
            )
            self._upstream = upstream
        return upstream

    def _drop(self) -> None:
        upstream, self._upstream = self._upstream, None
        self._resetTransaction()
        if upstream is not None:
            upstream.client.abort()

    def _resetTransaction(self) -> None:
        self._sender = None
        self._accepted = []
        self._refused = {}
        self._stuffer = None

    def _passOn(self, reply: Reply, expected: int = 2) -> Reply:
        """
        The upstream's C{reply} as the client gets it: a 421 becomes 451
        (this server is not closing; the upstream session is dropped), a
        reply of an unexpected kind drops the session and gives 451 4.5.0.
        """
        kind = reply.code // 100
        if reply.code == 421:
            self._drop()
            return Reply(451, *reply.lines, enhanced=reply.enhanced or "4.4.2")
        if kind not in (expected, 4, 5):
            self._drop()
            return self._failed(
                UpstreamProtocolError(f"unexpected reply {reply.code} {reply.text}")
            )
        return reply

    def _failed(self, error: UpstreamError) -> Reply:
        """
        Log why the upstream failed (with the session id) and give the
        client's reply.
        """
        log.warn(
            "session {session}: relay to {host}: {error}",
            session=self.session.id,
            host=self.config.host,
            error=str(error),
        )
        return errorReply(error)

    async def _command(self, line: str) -> Reply:
        upstream = self._upstream
        if upstream is None or not upstream.usable:
            raise UpstreamLost("no session")
        return await upstream.client.command(line, self.config.commandTimeout)

    # -- the envelope ---------------------------------------------------------

    async def MAIL(self, sender: str, params: Params) -> HookResult:
        """
        Open the upstream session if needed and send MAIL: its reply is the
        client's. A session kept from an earlier transaction that turns out
        closed is opened again once.
        """
        unknown = _unknownParameter(params)
        if unknown is not None:
            return unknown
        for attempt in (1, 2):
            reused = self._open() is not None
            try:
                upstream = await self._connect()
                line = f"MAIL FROM:<{sender}>" + mailParameters(params, upstream)
                reply = await self._command(line)
            except ReplyError as e:
                return e.reply
            except UpstreamLost as e:
                self._drop()
                if reused and attempt == 1:
                    continue
                return self._failed(e)
            except UpstreamError as e:
                self._drop()
                return self._failed(e)
            break
        if reply.code // 100 == 2:
            self._sender = sender
        return self._passOn(reply)

    async def RCPT(self, recipient: str, params: Params) -> HookResult:
        """
        Send RCPT upstream: its reply is the client's.
        """
        unknown = _unknownParameter(params)
        if unknown is not None:
            return unknown
        upstream = self._open()
        if upstream is None or self._sender is None:
            # MAIL went unmirrored (answered by another handler) or the
            # session was lost: the envelope is sent again first.
            try:
                refusal = await self._envelope()
                if refusal is not None:
                    return refusal
                upstream = self._open()
                if upstream is None:
                    raise UpstreamLost("no session")
            except UpstreamError as e:
                self._drop()
                return self._failed(e)
            except ReplyError as e:
                return e.reply
        try:
            reply = await self._command(
                f"RCPT TO:<{recipient}>" + rcptParameters(params, upstream)
            )
        except UpstreamError as e:
            self._drop()
            return self._failed(e)
        if reply.code // 100 == 2:
            self._accepted.append(recipient)
        return self._passOn(reply)

    async def _envelope(self) -> Reply | None:
        """
        Make the upstream transaction's envelope the client transaction's
        (when MAIL or RCPT was answered by another handler of a chain, or
        the session was lost): RSET and send it again if it differs.

        @return: a refusal of the whole transaction, or L{None}; recipients
            refused now are kept in C{_refused}.
        """
        transaction = self.session.transaction
        assert transaction is not None
        wanted = [r.address for r in transaction.recipients]
        if (
            self._open() is not None
            and self._sender == transaction.sender
            and self._accepted == wanted
        ):
            return None
        if self._open() is not None and self._sender is not None:
            reply = await self._command("RSET")
            if reply.code != 250:
                self._drop()
        self._resetTransaction()
        envelope = transaction.sender, transaction.mailParams, transaction.recipients
        sent, reply = await self._sendEnvelope(*envelope)
        if not sent or (wanted and not self._accepted):
            return reply
        return None

    async def _sendEnvelope(
        self, sender: str, senderParams: Params, recipients: Sequence[Recipient]
    ) -> tuple[bool, Reply]:
        """
        MAIL, then RCPT for each recipient (into C{_accepted} or C{_refused}):
        whether MAIL was accepted, and MAIL's refusal or the last RCPT reply.
        """
        upstream = await self._connect()
        line = f"MAIL FROM:<{sender}>" + mailParameters(senderParams, upstream)
        reply = self._passOn(await self._command(line))
        if reply.code // 100 != 2:
            return False, reply
        self._sender = sender
        for recipient in recipients:
            line = f"RCPT TO:<{recipient.address}>" + rcptParameters(
                recipient.params, upstream
            )
            reply = self._passOn(await self._command(line))
            if reply.code // 100 == 2:
                self._accepted.append(recipient.address)
            else:
                self._refused[recipient.address.lower()] = reply
        return True, reply

    # -- the message ------------------------------------------------------

    async def DATA(self) -> HookResult:
        """
        Send DATA upstream; a refusal is the client's, a 354 lets the
        message in.
        """
        try:
            refusal = await self._envelope()
            if refusal is not None:
                return refusal
            if self.spools():
                self._openSpool()
                return super().DATA()
            reply = await self._command("DATA")
        except ReplyError as e:
            return e.reply
        except UpstreamError as e:
            self._drop()
            return self._failed(e)
        if reply.code != 354:
            return self._passOn(reply, expected=3)
        self._stuffer = DotStuffer()
        if self.received:
            transaction = self.session.transaction
            assert transaction is not None
            written = self._write(receivedHeader(self.session, transaction))
            if written is not None:
                await written
        return super().DATA()

    def EOH(self) -> HookResult:
        if self._spoolFile is not None:
            return None  # the header section is written at EOM
        transaction = self.session.transaction
        assert transaction is not None
        return self._write(transaction.rawHeaders)

    def BODY(self, chunk: bytes) -> HookResult:
        if self._spoolFile is not None:
            self._spoolWrite(chunk)
            return None
        return self._write(chunk)

    def _write(self, data: bytes) -> Deferred[None] | None:
        """
        Write message bytes upstream; a Deferred while its buffer is full.

        @raise ReplyError: the upstream is gone (the message is refused).
        """
        upstream, stuffer = self._open(), self._stuffer
        if upstream is None or stuffer is None:
            raise ReplyError(self._failed(UpstreamLost("during the message")))
        written = upstream.client.writeBody(
            stuffer.stuff(data), self.config.dataTimeout
        )
        if written is None:
            return None
        return written.addErrback(self._writeFailed)

    def _writeFailed(self, failure: Failure) -> None:
        failure.trap(UpstreamError)
        self._drop()
        raise ReplyError(self._failed(failure.value))  # type: ignore[arg-type]

    async def EOM(self) -> Reply | PerRecipient:
        """
        End the message upstream and answer with the upstream's reply (under
        LMTP, its reply for each recipient).
        """
        transaction = self.session.transaction
        assert transaction is not None
        if self._spoolFile is not None:
            return await self._relaySpooled(transaction)
        upstream, stuffer = self._open(), self._stuffer
        if upstream is None or stuffer is None:
            return self._failed(UpstreamLost("during the message"))
        if transaction.modified:
            self._drop()  # the upstream discards the unfinished message
            return MODIFIED
        accepted, refused = self._accepted, self._refused
        self._resetTransaction()
        replies = await self._endMessage(upstream, stuffer, len(accepted))
        if not self.config.lmtp and not refused:
            return replies[0]
        return self._perRecipient(transaction.recipients, accepted, replies, refused)

    async def _endMessage(
        self, upstream: UpstreamSession, stuffer: DotStuffer, accepted: int
    ) -> list[Reply]:
        """
        End the message upstream; the upstream's final replies (one, or
        under LMTP one per accepted recipient), failures as the client's.
        """
        client = upstream.client
        written = client.writeBody(stuffer.end(), self.config.dataTimeout)
        count = accepted if self.config.lmtp else 1
        waiting = client.replies(count, self.config.dataTimeout)
        if written is not None:
            written.addErrback(lambda f: None)  # the replies fail as well
        results = await DeferredList(waiting, consumeErrors=True)
        replies: list[Reply] = []
        for ok, value in results:
            if ok:
                replies.append(self._passOn(value))
                continue
            failure: Failure = value  # type: ignore[assignment]
            failure.trap(UpstreamError)
            self._drop()
            replies.append(self._failed(failure.value))  # type: ignore[arg-type]
        return replies

    # -- the end of a transaction and of the session ----------------------

    async def ABORT(self) -> None:
        """
        The client's transaction ended unfinished: RSET upstream, or, in the
        middle of the message, drop the session (the upstream discards an
        unfinished message).
        """
        self._closeSpool()
        if self._open() is None:
            return
        if self._stuffer is not None:
            self._drop()
            return
        if self._sender is None:
            return
        self._resetTransaction()
        try:
            reply = await self._command("RSET")
        except UpstreamError:
            reply = None
        if reply is None or reply.code != 250:
            self._drop()

    def DISCONNECT(self) -> None:
        """
        QUIT upstream (without waiting for its reply).
        """
        self._closeSpool()
        upstream, self._upstream = self._upstream, None
        if upstream is None or not upstream.usable:
            return
        client = upstream.client
        if self._stuffer is not None:
            client.abort()
            return
        quitting = client.command("QUIT", min(self.config.commandTimeout or 10, 10))
        quitting.addBoth(lambda _: client.close())
